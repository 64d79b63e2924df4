import json

import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file

from studio.trainers.pretrain import PretrainConfig, PretrainTrainer, counterfactual_velocity, pair_contrast


def tiny_config(out, **overrides) -> PretrainConfig:
    fields = {
        "world": "shapes",
        "out": out,
        "channels": (16, 32),
        "attention_levels": (1,),
        "batch_size": 4,
        "max_steps": 3,
        "lr": 1e-3,
        "checkpoint_every": 100,
        "sample_prompts": 2,
        "seed": 3,
    }
    return PretrainConfig(**{**fields, **overrides})


def weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.trainable_state().items()}


def run_steps(trainer, n):
    return [trainer.optimizer_step()["loss"] for _ in range(n)]


def test_resume_replays_exactly(tmp_path):
    straight = PretrainTrainer(tiny_config(tmp_path / "a"))
    straight.setup()
    losses_a = run_steps(straight, 3)

    first = PretrainTrainer(tiny_config(tmp_path / "b"))
    first.setup()
    losses_b = run_steps(first, 2)
    first.save_checkpoint()
    resumed = PretrainTrainer(tiny_config(tmp_path / "b"))
    resumed.setup()
    assert resumed.step == 2
    losses_b += run_steps(resumed, 1)

    assert losses_a == pytest.approx(losses_b, rel=1e-6)
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7, msg=k)
    for k, v in straight.ema.shadow.items():
        torch.testing.assert_close(v, resumed.ema.shadow[k], rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_data_processes_prepare_the_same_batches(tmp_path):
    """num_workers only moves load_batch into other processes: the run is the same to the last bit."""
    trained = {}
    for workers in (0, 2):
        trainer = PretrainTrainer(tiny_config(tmp_path / f"w{workers}", world="synth", num_workers=workers))
        trainer.fit()
        trained[workers] = weights(trainer)
    for k, v in trained[0].items():
        torch.testing.assert_close(trained[2][k], v, rtol=0, atol=0, msg=k)


def test_pair_contrast_scores_only_what_tells_a_pair_apart():
    torch.manual_seed(0)
    target = torch.randn(6, 1, 4, 5)
    keep = torch.tensor([True, True, True])
    assert pair_contrast(target.clone(), target, keep) == 0
    shared = target + torch.randn(3, 1, 4, 5).repeat_interleave(2, 0)  # wrong, but wrong alike within each pair
    torch.testing.assert_close(pair_contrast(shared, target, keep), torch.tensor(0.0), atol=1e-6, rtol=0)
    blind = target.clone()
    blind[1::2] = blind[0::2]  # the same prediction for both of a pair
    torch.testing.assert_close(pair_contrast(blind, target, keep), torch.tensor(1.0))
    half = target.clone()
    half[1::2] = (target[0::2] + target[1::2]) / 2  # half of each difference
    torch.testing.assert_close(pair_contrast(half, target, keep), torch.tensor(0.25))
    dropped = torch.tensor([False, True, True])  # pair 0 is blind and not scored
    half[1] = half[0]
    torch.testing.assert_close(pair_contrast(half, target, dropped), torch.tensor(0.25))
    pred = target.clone().requires_grad_()
    pair_contrast(pred + 0.1 * torch.randn_like(pred), target, keep).backward()
    torch.testing.assert_close(pred.grad[0::2], -pred.grad[1::2])  # only the difference within a pair is pulled


def contrast_config(out, weight, **overrides):
    return tiny_config(
        out,
        world="synth",
        channels=(8, 16),
        contrast_attribute="mode",
        contrast_weight=weight,
        prediction_type="v_prediction",
        snr_gamma=None,
        **overrides,
    )


def test_contrast_batches_are_pairs_with_shared_draws(tmp_path):
    trainer = PretrainTrainer(contrast_config(tmp_path, 1.0))
    trainer.setup()
    batch = trainer.load_batch(0, [0, 1, 2, 3])
    modes = [trainer.world.parse_prompt(c)["mode"] for c in batch["captions"]]
    assert modes[0] != modes[1] and modes[2] != modes[3]
    for key in ("noise", "t", "drop"):
        torch.testing.assert_close(batch[key][0::2], batch[key][1::2], rtol=0, atol=0)
    assert not torch.equal(batch["noise"][0], batch["noise"][2])


@pytest.mark.slow
def test_the_contrast_term_teaches_the_pair_difference(tmp_path):
    """On one pair revisited, the weighted term drives the contrast down; the plain loss alone does not."""
    curves = {}
    for weight in (10.0, 0.0):
        trainer = PretrainTrainer(contrast_config(tmp_path / f"w{weight:g}", weight, batch_size=2, lr=1e-2))
        trainer.setup()
        curves[weight] = []
        for _ in range(12):
            trainer.step = 0
            curves[weight].append(trainer.optimizer_step()["contrast"])
    assert curves[10.0][0] == curves[0.0][0]
    assert curves[10.0][-1] < 0.2 * curves[10.0][0]
    assert curves[0.0][-1] > 2 * curves[10.0][-1]


def test_counterfactual_velocity_is_the_velocity_towards_any_clip():
    scheduler = DDPMScheduler(prediction_type="v_prediction", beta_schedule="squaredcos_cap_v2")
    torch.manual_seed(0)
    x0, other, noise = torch.randn(3, 4, 1, 6, 5).unbind(0)
    t = torch.tensor([10, 300, 650, 990])
    noisy = scheduler.add_noise(x0, noise, t)
    alphas = scheduler.alphas_cumprod[t]
    # for the clip that was noised it is diffusers' own target
    torch.testing.assert_close(counterfactual_velocity(noisy, x0, alphas), scheduler.get_velocity(x0, noise, t))
    # for another clip, the clean estimate it implies (alpha x_t - sigma v) is that clip
    v = counterfactual_velocity(noisy, other, alphas)
    alpha, sigma = alphas.sqrt().view(-1, 1, 1, 1), (1 - alphas).sqrt().view(-1, 1, 1, 1)
    torch.testing.assert_close(alpha * noisy - sigma * v, other, rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    ("contrast_input", "t_range", "alike"),
    [("own", (0.3, 0.6), False), ("shared", (0.3, 0.6), True), ("shared", (0.0, 0.3), False)],
)
def test_shared_contrast_input_feeds_both_captions_one_noisy_clip(tmp_path, contrast_input, t_range, alike):
    """Above ``contrast_shared_from`` (0.3) a shared pair's members get one input; below, their own."""
    config = contrast_config(tmp_path, 0.1, contrast_input=contrast_input, contrast_t_range=t_range)
    trainer = PretrainTrainer(config)
    trainer.setup()
    batch = trainer.load_batch(0, [0, 1, 2, 3])
    low, high = (round(1000 * edge) for edge in t_range)
    assert ((batch["t"] >= low) & (batch["t"] < high)).all()
    inputs = []
    trainer.model.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach()))
    trainer.train_step(batch)
    for pair in range(2):
        assert torch.equal(inputs[0][2 * pair], inputs[0][2 * pair + 1]) == alike


def test_init_continues_from_a_pipelines_unet_and_refuses_another_architecture(tmp_path):
    first = PretrainTrainer(tiny_config(tmp_path / "a"))
    first.fit()
    exported = load_file(tmp_path / "a" / "model" / "unet" / "diffusion_pytorch_model.safetensors")
    second = PretrainTrainer(tiny_config(tmp_path / "b", init=tmp_path / "a" / "model"))
    second.setup()
    for k, v in weights(second).items():
        torch.testing.assert_close(v, exported[k], rtol=0, atol=0, msg=k)
    assert "Continued from the UNet of" in second.model_card({"steps": 0, "train_minutes": 0.0}, 1)
    with pytest.raises(ValueError, match="another architecture"):
        PretrainTrainer(tiny_config(tmp_path / "c", channels=(16, 24), init=tmp_path / "a" / "model")).setup()
    with pytest.raises(ValueError, match="no unet"):
        PretrainTrainer(tiny_config(tmp_path / "d", init=tmp_path)).setup()
    with pytest.raises(ValueError, match="neither a pipeline folder nor an embedded model"):
        PretrainTrainer(tiny_config(tmp_path / "e", init=tmp_path / "missing")).setup()


def test_checkpoint_is_atomic_and_pruned(tmp_path):
    trainer = PretrainTrainer(tiny_config(tmp_path, keep_checkpoints=2))
    trainer.setup()
    for _ in range(3):
        run_steps(trainer, 1)
        trainer.save_checkpoint()
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000002", "step-00000003"]
    assert (root / "latest").read_text().strip() == "step-00000003"
    state = json.loads((root / "step-00000003" / "trainer_state.json").read_text())
    assert state["step"] == 3 and state["config"]["world"] == "shapes"


def test_training_reduces_the_loss_and_only_trains_the_unet(tmp_path):
    trainer = PretrainTrainer(tiny_config(tmp_path, lr=2e-3))
    trainer.setup()
    assert not any(p.requires_grad for p in trainer.text_encoder.parameters())
    before = [trainer.optimizer_step()["mse"] for _ in range(3)]
    trainer.step = 0  # revisit the same batches: the model must now fit them better
    after = []
    for _ in range(15):
        trainer.step = len(after) % 3
        after.append(trainer.optimizer_step()["mse"])
    assert sum(after[-3:]) < 0.8 * sum(before)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"attention_levels": (0, 1)}, "must not include 0"),
        ({"condition_dropout": 1.0}, "condition_dropout"),
        ({"max_steps": 0}, "max_steps must be positive"),
        ({"ema_decay": 1.5}, "ema_decay"),
        ({"contrast_weight": 0.5}, "set contrast_attribute"),
        ({"contrast_weight": float("nan"), "contrast_attribute": "colour"}, "contrast_weight must be"),
        ({"contrast_attribute": "mode"}, "'mode' is not a shapes attribute"),
        ({"contrast_attribute": "colour", "batch_size": 3}, "even batch_size"),
        ({"contrast_attribute": "colour"}, "set prediction_type=v_prediction"),
        ({"contrast_input": "shared"}, "contrast_input=shared needs pairs"),
        ({"contrast_input": "both"}, "contrast_input must be"),
        ({"contrast_shared_from": 0.0}, "contrast_shared_from must be"),
        ({"contrast_attribute": "colour", "contrast_t_range": (0.5, 0.5)}, "contrast_t_range must be"),
    ],
)
def test_bad_configs_are_refused(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(tmp_path, **override)


def test_music_pretraining_steps_and_exports_a_music_pipeline(tmp_path):
    from studio.pipelines import StudioMusicPipeline

    config = tiny_config(tmp_path, world="synth", channels=(8, 16), batch_size=2, max_steps=2, sample_every=0)
    trainer = PretrainTrainer(config)
    trainer.setup()
    losses = [trainer.optimizer_step()["loss"] for _ in range(2)]
    assert all(torch.isfinite(torch.tensor(losses)))
    pipe = trainer.pipeline()
    assert isinstance(pipe, StudioMusicPipeline)
    trainer.export({"steps": 2, "train_minutes": 0.1})
    saved = {p.name for p in (tmp_path / "model").iterdir()}
    assert {"model_index.json", "unet", "scheduler", "codec", "README.md"} <= saved
    loaded = StudioMusicPipeline.from_pretrained(tmp_path / "model")
    assert loaded.codec.config.n_mels == trainer.codec.config.n_mels


def test_v_prediction_trains_and_reaches_the_sampler(tmp_path):
    trainer = PretrainTrainer(tiny_config(tmp_path, prediction_type="v_prediction", snr_gamma=None, lr=2e-3))
    trainer.setup()
    first = [trainer.optimizer_step()["mse"] for _ in range(3)]
    for _ in range(12):
        trainer.step %= 3
        last = trainer.optimizer_step()["mse"]
    assert last < first[trainer.step - 1]
    assert trainer.pipeline().scheduler.config.prediction_type == "v_prediction"


def test_fit_checkpoints_once_samples_and_exports_a_card(tmp_path):
    config = tiny_config(tmp_path / "run", max_steps=2, sample_prompts=1, export=tmp_path / "shipped")
    metrics = PretrainTrainer(config, command="mixstudio train pretrain-shapes --set max_steps=2").fit()
    assert metrics["steps"] == 2 and 0.0 <= metrics["sample_adherence"] <= 1.0
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["latest", "step-00000002"]
    assert [p.name for p in (tmp_path / "run" / "samples").iterdir()] == ["step-00000002.png"]
    card = (tmp_path / "shipped" / "README.md").read_text()
    assert "mixstudio train pretrain-shapes --set max_steps=2" in card and "Steps: 2 at batch 4" in card
    assert not (tmp_path / "run" / "log.csv").exists()  # log_every=10 > 2 steps: nothing logged yet


def test_the_attention_field_routes_training_through_a_backend_without_changing_it(tmp_path):
    from studio.attention import get_backend

    plain = PretrainTrainer(tiny_config(tmp_path / "plain"))
    plain.setup()
    routed = PretrainTrainer(tiny_config(tmp_path / "routed", attention="reference"))
    routed.setup()
    assert get_backend(plain.model) is None and get_backend(routed.model) == "reference"
    assert run_steps(routed, 2) == pytest.approx(run_steps(plain, 2), rel=1e-4)
    with pytest.raises(ValueError, match="attention 'flash' is unknown"):
        tiny_config(tmp_path / "bad", attention="flash")


def test_a_nan_loss_stops_training_at_that_step_and_keeps_the_last_checkpoint(tmp_path):
    trainer = PretrainTrainer(tiny_config(tmp_path / "run", max_steps=4, checkpoint_every=2))
    steps = []
    real = trainer.train_step

    def poisoned(batch):
        loss, metrics = real(batch)
        steps.append(trainer.step)
        return (loss * float("nan") if trainer.step == 2 else loss), metrics

    trainer.train_step = poisoned
    with pytest.raises(ValueError, match=r"step 3: the loss is not finite .* last good checkpoint is .*step-00000002"):
        trainer.fit()
    root = tmp_path / "run" / "checkpoints"
    assert (root / "latest").read_text().strip() == "step-00000002" and not (tmp_path / "run" / "model").exists()
    assert all(torch.isfinite(v).all() for v in load_file(root / "step-00000002" / "model.safetensors").values())


def test_a_changed_lr_applies_on_resume_with_a_warning(tmp_path, caplog):
    first = PretrainTrainer(tiny_config(tmp_path / "run", lr_warmup_steps=0))
    first.setup()
    run_steps(first, 2)
    first.save_checkpoint()
    resumed = PretrainTrainer(tiny_config(tmp_path / "run", lr=5e-4, lr_warmup_steps=0))
    with caplog.at_level("WARNING"):
        resumed.setup()
    assert "lr changed from 0.001 to 0.0005 on resume" in caplog.text
    expected = 5e-4 * resumed.lr_scheduler.lr_lambdas[0](resumed.lr_scheduler.last_epoch)
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    run_steps(resumed, 1)
    assert resumed.lr_scheduler.get_last_lr()[0] == pytest.approx(5e-4 * resumed.lr_scheduler.lr_lambdas[0](3))


def test_a_tampered_or_mismatched_checkpoint_is_refused_in_one_line(tmp_path):
    first = PretrainTrainer(tiny_config(tmp_path / "run"))
    first.setup()
    run_steps(first, 1)
    path = first.save_checkpoint()
    (path / "optimizer.pt").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(ValueError, match=r"checkpoint file .*optimizer\.pt' cannot be read .* delete this checkpoint"):
        PretrainTrainer(tiny_config(tmp_path / "run")).setup()
    first.save_checkpoint()  # repaired
    with pytest.raises(ValueError, match=r"does not fit this run's model .* use a new --out"):
        PretrainTrainer(tiny_config(tmp_path / "run", channels=(16, 48))).setup()
