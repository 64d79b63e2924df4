"""DDPO: the step log-probability, PPO's clipped ratio, per-prompt advantages, a reward that climbs, exact resume."""

import json
import math
import textwrap

import pytest
import torch
from diffusers import DDIMScheduler
from safetensors.torch import load_file

from studio.pipelines import load_pipeline
from studio.recipes import get_recipe
from studio.sampling import ddim_step_with_logprob
from studio.trainers.ddpo import DDPOConfig, DDPOTrainer, ppo_clip_loss
from studio.trainers.rewards import decode_samples
from studio.trainers.stat_tracker import PerPromptStatTracker


@pytest.fixture
def brightness(tmp_path, monkeypatch) -> str:
    """A constructed reward, importable by path: the mean pixel value of each decoded image."""
    (tmp_path / "ddpo_rewards.py").write_text(
        textwrap.dedent(
            """
            def brightness(samples, prompts):
                return samples.flatten(1).mean(1)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "ddpo_rewards:brightness"


def make_trainer(folder, out, **overrides) -> DDPOTrainer:
    settings = {
        "base": str(folder), "world": "shapes", "out": out, "batch_size": 4, "samples_per_prompt": 2,
        "sample_steps": 4, "lr": 1e-3, "lr_warmup_steps": 0, "sample_prompts": 1,
    }  # fmt: skip
    trainer = DDPOTrainer(DDPOConfig(**{**settings, **overrides}))
    trainer.setup()
    return trainer


# ---- the policy's log-probability ----------------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_the_step_log_prob_is_the_gaussian_at_the_schedulers_mean_and_std(prediction_type, eta):
    """At every noisy step of a 6-step schedule: diffusers' DDIM step gives the mean (zero noise) and its variance
    the std; torch.distributions scores the action. The log-probability is per dimension (the authors' code)."""
    scheduler = DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type, clip_sample=False)
    scheduler.set_timesteps(6)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 5, 7, generator=gen)
    for i, t in enumerate(scheduler.timesteps[:-1]):
        output = torch.randn(x.shape, generator=gen)
        prev_t = int(scheduler.timesteps[i + 1])
        mean = scheduler.step(output, t, x, eta=eta, variance_noise=torch.zeros_like(x)).prev_sample
        std = eta * scheduler._get_variance(t, prev_t).sqrt()
        action = mean + std * torch.randn(x.shape, generator=gen)
        a_t = scheduler.alphas_cumprod[t].expand(3, 1, 1, 1)
        a_prev = scheduler.alphas_cumprod[prev_t].expand(3, 1, 1, 1)
        ours = ddim_step_with_logprob(output, x, a_t, a_prev, prediction_type, eta, prev_sample=action)
        expected = torch.distributions.Normal(mean, std).log_prob(action).flatten(1).mean(1)
        torch.testing.assert_close(ours.log_prob, expected, rtol=1e-5, atol=1e-5)
        # drawing with the same noise diffusers adds gives the action it would take
        noise = torch.randn(x.shape, generator=gen)
        drawn = ddim_step_with_logprob(output, x, a_t, a_prev, prediction_type, eta, noise=noise)
        reference = scheduler.step(output, t, x, eta=eta, variance_noise=noise).prev_sample
        torch.testing.assert_close(drawn.prev_sample, reference, rtol=1e-5, atol=1e-5)
        x = action
    # the last step (to ᾱ_prev = 1) is deterministic: no density
    a_last = scheduler.alphas_cumprod[int(scheduler.timesteps[-1])].expand(3, 1, 1, 1)
    with pytest.raises(ValueError, match="σ_t = 0"):
        ddim_step_with_logprob(x, x, a_last, torch.ones(3, 1, 1, 1), prediction_type, eta, noise=torch.zeros_like(x))
    with pytest.raises(ValueError, match="eta must be > 0"):
        ddim_step_with_logprob(x, x, a_last, a_last, prediction_type, 0.0, noise=x)


def test_the_log_prob_gradient_reaches_the_model_output_only():
    output = torch.randn(2, 1, 3, 3, requires_grad=True)
    action = torch.randn(2, 1, 3, 3, requires_grad=True)
    a_t, a_prev = torch.full((2, 1, 1, 1), 0.5), torch.full((2, 1, 1, 1), 0.8)
    step = ddim_step_with_logprob(output, torch.zeros(2, 1, 3, 3), a_t, a_prev, "epsilon", 1.0, prev_sample=action)
    step.log_prob.sum().backward()
    assert output.grad.abs().sum() > 0 and action.grad is None


# ---- PPO ----------------------------------------------------------------------------------------------
def test_the_clipped_objective_and_its_gradient_match_the_hand_computed_ones():
    advantages = torch.tensor([1.0, 1.0, -1.0, -1.0, 2.0])
    ratio = torch.tensor([1.5, 0.9, 0.5, 1.05, 0.7])
    old = torch.tensor([-0.3, 0.2, 1.0, -2.0, 0.0])
    log_prob = (old + ratio.log()).requires_grad_(True)
    terms = ppo_clip_loss(log_prob, old, advantages, clip_range=0.2)
    # max(−Aρ, −A·clip(ρ, 0.8, 1.2)) per sample
    expected = torch.tensor([-1.2, -0.9, 0.8, 1.05, -1.4])
    torch.testing.assert_close(terms.loss.detach(), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(terms.ratio.detach(), ratio, rtol=1e-6, atol=1e-6)
    terms.loss.sum().backward()
    # where the clip binds the gradient is 0; elsewhere d(−Aρ)/d log p = −Aρ
    torch.testing.assert_close(log_prob.grad, torch.tensor([0.0, -0.9, 0.0, 1.05, -1.4]), rtol=1e-6, atol=1e-6)


def test_the_ratio_is_exactly_one_on_the_first_inner_epoch(tiny_shapes_folder, tmp_path):
    """Re-scored under the unchanged model, each stored action has the log-probability it was drawn with, to the
    bit; so the first update's ratio is 1 and nothing is clipped, and the second update's is not."""
    trainer = make_trainer(tiny_shapes_folder, tmp_path / "run", guidance_scale=3.0, guidance_interval=(0.0, 0.6))
    batch = trainer.sample_round(trainer.local_indices(0))
    predict = trainer.guided_predictor(batch.embeds, batch.mask)
    for i in range(trainer.policy_steps):
        rescored = trainer.policy_step(predict, batch.states[i], i, prev_sample=batch.actions[i])
        assert torch.equal(rescored.log_prob, batch.log_probs[i])
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    steps = list(range(trainer.policy_steps))
    _, first = trainer.ppo_update(batch, advantages, steps, take=True)
    assert first == {"approx_kl": 0.0, "clipfrac": 0.0}
    _, second = trainer.ppo_update(batch, advantages, steps, take=True)
    assert second["approx_kl"] > 0 and second["clipfrac"] > 0


# ---- advantages ---------------------------------------------------------------------------------------
def test_advantages_are_normalised_per_prompt_with_the_batch_as_fallback():
    tracker = PerPromptStatTracker(buffer_size=4, min_count=3)
    prompts = ["a"] * 4 + ["b"] * 3 + ["c"] * 2
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0, -5.0, -4.0, -9.0, 10.0, 20.0])
    advantages = tracker.update(prompts, rewards)
    for name in ("a", "b"):  # enough rewards: the prompt's own statistics
        own = advantages[[i for i, p in enumerate(prompts) if p == name]]
        assert own.mean().item() == pytest.approx(0.0, abs=1e-6)
        assert own.std(correction=0).item() == pytest.approx(1.0, abs=1e-5)
    # "c" has 2 < 3 rewards: the whole batch's mean and (population) std
    mean, std = rewards.mean(), rewards.std(correction=0)
    torch.testing.assert_close(advantages[-2:], (rewards[-2:] - mean) / (std + 1e-6))

    # the next batch: "c" now holds 4 rewards and uses them; "a"'s buffer keeps its last 4
    again = tracker.update(["c", "c", "a"], torch.tensor([30.0, 40.0, 0.0]))
    c = torch.tensor([10.0, 20.0, 30.0, 40.0])
    torch.testing.assert_close(again[:2], (torch.tensor([30.0, 40.0]) - c.mean()) / (c.std(correction=0) + 1e-6))
    a = torch.tensor([2.0, 3.0, 6.0, 0.0])
    torch.testing.assert_close(again[2:], (0.0 - a.mean()) / (a.std(correction=0) + 1e-6).reshape(1))

    restored = PerPromptStatTracker(buffer_size=4, min_count=3)
    restored.load_state_dict(tracker.state_dict())
    assert restored.buffers == tracker.buffers
    probe = torch.tensor([5.0, 7.0])
    torch.testing.assert_close(restored.update(["a", "b"], probe), tracker.update(["a", "b"], probe))
    with pytest.raises(ValueError, match=r"min_count must be in \[1, buffer_size=4\]"):
        PerPromptStatTracker(buffer_size=4, min_count=5)


def test_advantages_pool_the_round_and_are_clipped(tiny_shapes_folder, tmp_path):
    trainer = make_trainer(
        tiny_shapes_folder, tmp_path / "run", batch_size=6, samples_per_prompt=3, stat_min_count=3, advantage_clip=1.0
    )
    rewards = torch.tensor([0.0, 1.0, 5.0, 2.0, 2.0, 2.0])
    advantages, pooled = trainer.advantages(rewards, trainer.local_indices(0))
    torch.testing.assert_close(pooled, rewards)
    std = rewards[:3].std(correction=0)
    expected = torch.cat([((rewards[:3] - 2.0) / (std + 1e-6)).clamp(-1, 1), torch.zeros(3)])
    torch.testing.assert_close(advantages, expected)


# ---- training -----------------------------------------------------------------------------------------
def fixed_brightness(trainer) -> float:
    """Mean brightness of 16 rollouts with fixed captions and noise (those of a far-off round)."""
    step, trainer.step = trainer.step, 10**6
    batch = trainer.sample_round(list(range(16)))
    trainer.step = step
    with torch.no_grad():
        return decode_samples(trainer.pipe, batch.samples).flatten(1).mean().item()


def test_a_constructed_reward_climbs(tiny_shapes_folder, tmp_path, brightness):
    """Eight rounds of 8 trajectories with brightness as the reward (every weight trained): brighter samples on
    held-fixed noise. Measured: −0.038 → 0.053."""
    trainer = make_trainer(
        tiny_shapes_folder, tmp_path / "run", reward=brightness, adapter={"method": "full"}, batch_size=8,
        samples_per_prompt=4, lr=3e-3, grad_clip=None,
    )  # fmt: skip
    before = fixed_brightness(trainer)
    logged = [trainer.optimizer_step() for _ in range(8)]
    assert fixed_brightness(trainer) > before + 0.05
    assert [m["reward_queries"] for m in logged] == [8.0 * k for k in range(1, 9)]
    assert all(m["clipfrac"] == 0 and m["approx_kl"] == 0 for m in logged)  # one update per round: on-policy


def weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.trainable_state().items()}


def test_resume_replays_exactly(tiny_shapes_folder, tmp_path):
    """2 rounds + save + load + 1 round = 3 rounds: LoRA weights, optimizer, schedule and the stat tracker, whose
    buffers matter here (captions recur from a pool of 2); two inner epochs per round."""
    settings = {"caption_pool": 2, "stat_min_count": 4, "inner_epochs": 2, "lr": 1e-2}
    straight = make_trainer(tiny_shapes_folder, tmp_path / "a", **settings)
    logged_a = [straight.optimizer_step() for _ in range(3)]

    first = make_trainer(tiny_shapes_folder, tmp_path / "b", **settings)
    logged_b = [first.optimizer_step() for _ in range(2)]
    first.save_checkpoint()
    resumed = make_trainer(tiny_shapes_folder, tmp_path / "b", **settings)
    assert resumed.step == 2 and resumed.tracker.buffers == first.tracker.buffers
    logged_b.append(resumed.optimizer_step())
    for a, b in zip(logged_a, logged_b, strict=True):
        assert b == pytest.approx(a, rel=1e-6, abs=1e-9)
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys() and all(k.endswith((".A", ".B")) for k in a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=1e-8, msg=k)

    # the tracker's state is what made them agree: resumed without it, the third round trains otherwise
    forgetful = make_trainer(tiny_shapes_folder, tmp_path / "b", **settings)
    forgetful.tracker.buffers.clear()
    forgetful.optimizer_step()
    assert any((weights(forgetful)[k] - a[k]).abs().max() > 1e-6 for k in a)


def test_only_the_adapter_trains_and_the_export_bakes_it(tiny_shapes_folder, tmp_path):
    config = DDPOConfig(
        base=str(tiny_shapes_folder), world="shapes", out=tmp_path / "run", batch_size=2, samples_per_prompt=2,
        sample_steps=2, max_steps=1, lr=1e-2, sample_prompts=1, adapter={"method": "lora", "rank": 2},
    )  # fmt: skip
    trainer = DDPOTrainer(config, command="mixstudio train ddpo-shapes --set max_steps=1")
    metrics = trainer.fit()
    assert metrics["steps"] == 1 and metrics["reward_queries"] == 2
    teacher = load_pipeline(tiny_shapes_folder, "image").unet.state_dict()
    for name, value in trainer.teacher.state_dict().items():
        torch.testing.assert_close(value, teacher[name], rtol=0, atol=0)
    adapter = load_file(tmp_path / "run" / "adapter.safetensors")
    assert adapter and any(v.abs().max() > 0 for k, v in adapter.items() if k.endswith(".B"))
    # the exported pipeline is the base with the adapter merged: plain UNet weights, some of them moved
    tuned = load_pipeline(tmp_path / "run" / "model", "image").unet.state_dict()
    assert tuned.keys() == teacher.keys()
    moved = [k for k in teacher if (tuned[k] - teacher[k]).abs().max() > 0]
    assert moved and all(k.endswith(("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight")) for k in moved)
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert "finetuned by DDPO on the adherence reward" in card and "Rounds: 1 (2 reward queries" in card
    assert json.loads((tmp_path / "run" / "model" / "train_config.json").read_text())["adapter"]["rank"] == 2


# ---- configs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"eta": 0.0}, "eta must be a finite number > 0"),
        ({"clip_range": math.inf}, "clip_range must be a finite number > 0"),
        ({"sample_steps": 1}, "sample_steps must be >= 2"),
        ({"batch_size": 6, "samples_per_prompt": 4}, "batch_size 6 is not a multiple of samples_per_prompt 4"),
        ({"timestep_fraction": 0.05}, r"timestep_fraction must be in \(0, 1\] and leave at least one"),
        ({"timestep_fraction": 1.5}, r"timestep_fraction must be in \(0, 1\]"),
        ({"inner_epochs": 0}, "inner_epochs must be >= 1"),
        ({"stat_min_count": 20}, r"min_count must be in \[1, buffer_size=16\]"),
        ({"caption_pool": 0}, "caption_pool must be >= 1 or none"),
        ({"adapter": {"method": "full", "rank": 4}}, "adapter.method=full trains every weight and takes no options"),
        ({"adapter": {"method": "lora", "rank": "two"}}, "adapter.rank"),
        ({"reward": "no_such_module_xyz:score"}, "reward 'no_such_module_xyz:score' does not resolve"),
        ({"reward": "diversity", "attributes": ("colour",)}, "choose what the adherence reward scores"),
    ],
)
def test_bad_settings_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        DDPOConfig(base="shapes", **overrides)


def test_the_recipes_share_the_reward_recipes_sampler_and_guidance():
    for name, reward in (("ddpo-shapes", "reward-shapes"), ("ddpo-synth", "reward-synth")):
        ddpo, backprop = get_recipe(name), get_recipe(reward)
        assert isinstance(ddpo, DDPOConfig) and ddpo.world == backprop.world
        for field in (
            "reward",
            "sample_steps",
            "guidance_scale",
            "guidance_rescale",
            "guidance_interval",
            "batch_size",
        ):
            assert getattr(ddpo, field) == getattr(backprop, field), (name, field)
