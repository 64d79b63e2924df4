"""Reward finetuning (DRaFT-K): the data term is the pretraining loss, rollouts are guided, the reward climbs."""

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from studio.guidance import cfg_combine, rescale_guided
from studio.pipelines import load_pipeline
from studio.recipes import get_recipe
from studio.trainers.config import sample_generator
from studio.trainers.reward_finetune import RewardFinetuneConfig, RewardFinetuneTrainer
from studio.trainers.rewards import JudgeEmbedder
from studio.worlds import sample_seed


def make_trainer(folder, tmp_path, **overrides) -> RewardFinetuneTrainer:
    settings = {"base": str(folder), "world": "shapes", "out": tmp_path / "run", "batch_size": 4, "lr": 1e-3}
    trainer = RewardFinetuneTrainer(RewardFinetuneConfig(**{**settings, **overrides}))
    trainer.setup()
    return trainer


def batch(trainer):
    indices = trainer.local_indices(0)
    samples = [trainer.world.sample(sample_seed(trainer.config.data_seed, i)) for i in indices]
    gens = [sample_generator(trainer.config.seed, 0, i) for i in indices]
    return samples, gens, *trainer.encode([s.caption for s in samples])


def train(trainer, steps: int) -> list[dict[str, float]]:
    """``steps`` updates on the first batch; each step's metrics. Only the student may get gradients."""
    logged = []
    for _ in range(steps):
        loss, metrics = trainer.train_step(trainer.local_indices(0))
        logged.append(metrics)
        trainer.optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in trainer.teacher.parameters())
        assert any(p.grad is not None and p.grad.abs().max() > 0 for p in trainer.model.parameters())
        trainer.optimizer.step()
    return logged


def test_the_data_term_is_the_v_prediction_pretraining_loss(tiny_shapes_folder, tmp_path):
    trainer = make_trainer(tiny_shapes_folder, tmp_path, reward_weight=0.0, condition_dropout=0.0)
    samples, gens, embeds, mask = batch(trainer)
    loss, metrics = trainer.train_step(trainer.local_indices(0))
    assert metrics["data_mse"] == pytest.approx(loss.item()) and "reward" not in metrics
    # the same draws, with diffusers' noising and velocity
    noise = torch.stack([torch.randn(trainer.sample_shape(), generator=g) for g in gens])
    t = torch.stack([torch.randint(0, 1000, (), generator=g) for g in gens])
    scheduler = DDPMScheduler.from_config(trainer.pipe.scheduler.config)
    x_0 = trainer.encode_data(samples)
    with torch.no_grad():
        pred = trainer.predictor(trainer.model, embeds, mask)(scheduler.add_noise(x_0, noise, t), t)
    expected = ((pred - scheduler.get_velocity(x_0, noise, t)) ** 2).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-7)


def test_rollouts_are_guided_by_the_trained_model(tiny_shapes_folder, tmp_path):
    trainer = make_trainer(tiny_shapes_folder, tmp_path, guidance_scale=3.0)
    embeds, mask = trainer.encode(["a red circle", "a blue star"])
    x = torch.randn(2, *trainer.sample_shape(), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([700, 200])
    with torch.no_grad():
        guided = trainer.guided_predictor(embeds, mask)(x, t)
        cond = trainer.predictor(trainer.model, embeds, mask)(x, t)
        null = trainer.null_embeds.expand(2, -1, -1)
        uncond = trainer.predictor(trainer.model, null, trainer.null_mask.expand(2, -1))(x, t)
    torch.testing.assert_close(guided, cfg_combine(uncond, cond, 3.0), rtol=1e-4, atol=1e-5)
    unguided = make_trainer(tiny_shapes_folder, tmp_path, guidance_scale=1.0)
    with torch.no_grad():
        torch.testing.assert_close(unguided.guided_predictor(embeds, mask)(x, t), cond, rtol=1e-4, atol=1e-5)

    refined = make_trainer(
        tiny_shapes_folder, tmp_path, guidance_scale=3.0, guidance_rescale=0.7, guidance_interval=(0.0, 0.6)
    )
    refined.model.load_state_dict(trainer.model.state_dict())
    predict = refined.guided_predictor(embeds, mask)
    with torch.no_grad():
        outside, inside = predict(x, torch.tensor([700, 700])), predict(x, torch.tensor([200, 200]))
        low = torch.tensor([200, 200])
        cond_low = trainer.predictor(trainer.model, embeds, mask)(x, low)
        uncond_low = trainer.predictor(trainer.model, null, trainer.null_mask.expand(2, -1))(x, low)
        cond_high = trainer.predictor(trainer.model, embeds, mask)(x, torch.tensor([700, 700]))
    torch.testing.assert_close(outside, cond_high, rtol=1e-4, atol=1e-5)  # above t/T = 0.6: conditional alone
    expected = rescale_guided(cfg_combine(uncond_low, cond_low, 3.0), cond_low, 0.7)
    torch.testing.assert_close(inside, expected, rtol=1e-4, atol=1e-5)


def test_the_reward_climbs_on_a_fixed_batch_and_only_the_student_learns(tiny_shapes_folder, tmp_path):
    """Reward alone, DRaFT-1 through 4 guided steps: the reward judge's log-likelihood of the captions rises."""
    trainer = make_trainer(tiny_shapes_folder, tmp_path, data_weight=0.0, sample_steps=4, lr=3e-3)
    teacher_before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    rewards = [metrics["reward"] for metrics in train(trainer, 12)]
    assert max(rewards[-3:]) > rewards[0] + 0.5, rewards
    for name, value in trainer.teacher.state_dict().items():
        torch.testing.assert_close(value, teacher_before[name], rtol=0, atol=0)


def test_the_anchor_is_the_squared_gap_to_the_base_on_both_branches_at_rollout_states(tiny_shapes_folder, tmp_path):
    trainer = make_trainer(tiny_shapes_folder, tmp_path, sample_steps=3, backprop_steps=1, anchor_weight=2.0)
    samples, gens, embeds, mask = batch(trainer)
    trajectory = []
    with torch.no_grad():
        trainer.reward(samples, embeds, mask, gens, trajectory)
        any_draws = [torch.Generator().manual_seed(i) for i in range(len(gens))]
        assert trainer.anchor_loss(trajectory, embeds, mask, any_draws).item() == 0  # the student starts as the base
        for p in trainer.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    # the same draws by hand: one state of each sample's rollout, the [∅; c] batch through both UNets
    draws = [sample_generator(trainer.config.seed, 0, i) for i in trainer.local_indices(0)]
    for g in draws:
        torch.randn(trainer.sample_shape(), generator=g)
    k = [int(torch.randint(0, 3, (), generator=g)) for g in draws]
    x = torch.stack([trajectory[k_][b] for b, k_ in enumerate(k)])
    t = trainer.sampler.timesteps[k]
    null, null_mask = trainer.null_embeds.expand(len(x), -1, -1), trainer.null_mask.expand(len(x), -1)
    with torch.no_grad():
        gaps = [
            trainer.predictor(trainer.model, e, m)(x, t) - trainer.predictor(trainer.teacher, e, m)(x, t)
            for e, m in ((null, null_mask), (embeds, mask))
        ]
    anchor = trainer.anchor_loss(trajectory, embeds, mask, gens)
    torch.testing.assert_close(anchor.detach(), torch.cat(gaps).square().mean(), rtol=1e-4, atol=1e-9)
    anchor.backward()
    assert all(p.grad is None for p in trainer.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in trainer.model.parameters())


def test_the_anchor_pulls_a_drifted_model_back_to_the_base(tiny_shapes_folder, tmp_path):
    trainer = make_trainer(
        tiny_shapes_folder, tmp_path, sample_steps=3, backprop_steps=1, reward_weight=1e-6, data_weight=0.0,
        anchor_weight=1.0, lr=3e-3,
    )  # fmt: skip
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    gaps = [metrics["anchor_mse"] for metrics in train(trainer, 8)]
    assert gaps[-1] < 0.5 * gaps[0], gaps


def test_the_diversity_reward_is_one_minus_cos_of_two_rollouts_of_each_caption(tiny_shapes_folder, tmp_path):
    trainer = make_trainer(
        tiny_shapes_folder, tmp_path, sample_steps=2, backprop_steps=2, reward_weight=0.0, data_weight=0.0,
        diversity_weight=2.0, guidance_scale=3.0,
    )  # fmt: skip
    _, gens, embeds, mask = batch(trainer)
    loss, metrics = trainer.train_step(trainer.local_indices(0))
    # by hand: two successive noise draws of each caption's generator, rolled out as one guided batch
    x_T = torch.stack([torch.randn(trainer.sample_shape(), generator=g) for g in gens for _ in range(2)])
    with torch.no_grad():
        predict = trainer.guided_predictor(embeds.repeat_interleave(2, 0), mask.repeat_interleave(2, 0))
        embedding = JudgeEmbedder(trainer.pipe, "shapes", "reward")(trainer.sampler.sample(predict, x_T))
    first, second = F.normalize(embedding[0::2], dim=-1), F.normalize(embedding[1::2], dim=-1)
    diversity = (1 - (first * second).sum(-1)).mean()
    assert diversity > 0.01  # the two rollouts of a caption differ
    assert metrics["diversity_reward"] == pytest.approx(diversity.item(), rel=1e-4)
    torch.testing.assert_close(loss.detach(), -2.0 * diversity, rtol=1e-4, atol=1e-7)
    loss.backward()
    assert all(p.grad is None for p in trainer.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in trainer.model.parameters())


def test_a_reward_by_import_path_and_the_reward_queries(tiny_shapes_folder, tmp_path, monkeypatch):
    """Brightness, brought by import path, is what the rollouts score; with the diversity reward each caption is
    rolled out twice, so a step of 4 captions makes 8 reward queries."""
    (tmp_path / "bright.py").write_text("def brightness(samples, prompts):\n    return samples.flatten(1).mean(1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    trainer = make_trainer(
        tiny_shapes_folder, tmp_path, sample_steps=2, backprop_steps=1, reward="bright:brightness", data_weight=0.0,
        diversity_weight=0.5,
    )  # fmt: skip
    assert trainer.vocabulary == {}
    _, gens, embeds, mask = batch(trainer)
    _, metrics = trainer.train_step(trainer.local_indices(0))
    x_T = torch.stack([torch.randn(trainer.sample_shape(), generator=g) for g in gens for _ in range(2)])
    with torch.no_grad():
        predict = trainer.guided_predictor(embeds.repeat_interleave(2, 0), mask.repeat_interleave(2, 0))
        bright = trainer.sampler.sample(predict, x_T).clamp(-1, 1).mean()
    assert metrics["reward"] == pytest.approx(bright.item(), rel=1e-5)
    assert "reward_judge_hits" not in metrics and metrics["reward_queries"] == 8
    trainer.step = 2
    assert trainer.train_step(trainer.local_indices(2))[1]["reward_queries"] == 3 * 8
    with pytest.raises(ValueError, match="choose what the adherence reward scores"):
        RewardFinetuneConfig(base="shapes", reward="bright:brightness", attributes=("colour",))


def test_gradient_checkpointing_changes_memory_not_the_update(tiny_shapes_folder, tmp_path):
    grads = []
    for checkpointing in (True, False):
        trainer = make_trainer(
            tiny_shapes_folder, tmp_path / str(checkpointing), sample_steps=3, backprop_steps=3, data_weight=0.0,
            gradient_checkpointing=checkpointing,
        )  # fmt: skip
        loss, _ = trainer.train_step(trainer.local_indices(0))
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in trainer.model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-7)
    assert grads[0].abs().max() > 0


@pytest.mark.slow
def test_the_diversity_reward_climbs_on_a_fixed_batch(tiny_shapes_folder, tmp_path):
    trainer = make_trainer(
        tiny_shapes_folder, tmp_path, sample_steps=3, backprop_steps=3, reward_weight=0.0, data_weight=0.0,
        diversity_weight=1.0, lr=3e-3,
    )  # fmt: skip
    diversity = [metrics["diversity_reward"] for metrics in train(trainer, 10)]
    assert max(diversity[-3:]) > diversity[0] + 0.2, diversity  # measured: 0.015 -> 0.47


def test_the_reward_scores_only_the_chosen_attributes(tiny_shapes_folder, tmp_path):
    trainer = make_trainer(tiny_shapes_folder, tmp_path, attributes=("colour",))
    assert list(trainer.vocabulary) == ["colour"]
    with pytest.raises(ValueError, match=r"attributes \['flavour'\] are not attributes of shapes"):
        make_trainer(tiny_shapes_folder, tmp_path, attributes=("flavour",))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"backprop_steps": 5, "sample_steps": 4}, "backprop_steps 5 exceeds sample_steps 4"),
        ({"sample_steps": 0}, "sample_steps and backprop_steps must be >= 1"),
        ({"reward_weight": -1.0}, "reward_weight must be a finite number >= 0"),
        ({"data_weight": float("nan")}, "data_weight must be a finite number >= 0"),
        ({"guidance_scale": float("inf")}, "guidance_scale must be a finite number"),
        ({"condition_dropout": 1.5}, r"condition_dropout must be in \[0, 1\]"),
        ({"reward_weight": 0.0, "data_weight": 0.0}, "nothing to train"),
        ({"reward_weight": 0.0, "anchor_weight": 1.0}, "anchor_weight > 0 anchors the rollouts"),
        ({"anchor_weight": -0.5}, "anchor_weight must be a finite number >= 0"),
        ({"diversity_weight": float("inf")}, "diversity_weight must be a finite number >= 0"),
    ],
)
def test_bad_settings_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        RewardFinetuneConfig(base="shapes", **overrides)


def test_the_recipes_build():
    for name, world in (("reward-shapes", "shapes"), ("reward-synth", "synth")):
        config = get_recipe(name)
        assert isinstance(config, RewardFinetuneConfig) and config.world == world


def test_a_run_exports_a_pipeline_with_its_card(tiny_shapes_folder, tmp_path):
    config = RewardFinetuneConfig(
        base=str(tiny_shapes_folder), world="shapes", out=tmp_path / "run", batch_size=2, max_steps=1,
        sample_steps=2, backprop_steps=2, guidance_scale=3.0, guidance_rescale=0.7, guidance_interval=(0.0, 0.6),
        sample_prompts=1, lr=1e-3, diversity_weight=0.5,
    )  # fmt: skip
    metrics = RewardFinetuneTrainer(config, command="mixstudio train reward-shapes --set max_steps=1").fit()
    assert metrics["steps"] == 1 and 0 <= metrics["sample_adherence"] <= 1
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert "DRaFT-2" in card and "(rescale φ=0.7, guided at t/T in [0, 0.6] only)" in card
    assert (
        "Steps: 1 at batch 2" in card
        and "base-anchor weight\n0, diversity-reward weight 0.5 (two rollouts per caption)." in card
    )
    assert "`mixstudio train reward-shapes --set max_steps=1`" in card
    tuned = load_pipeline(tmp_path / "run" / "model", "image").unet.state_dict()
    base = load_pipeline(tiny_shapes_folder, "image").unet.state_dict()
    assert tuned.keys() == base.keys()
    assert any((tuned[k] - base[k]).abs().max() > 0 for k in base)
