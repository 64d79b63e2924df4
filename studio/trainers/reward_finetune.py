"""Reward finetuning by backpropagation through the sampler (DRaFT; AlignProp), with an adherence reward.

DRaFT (Clark et al. 2024, "Directly Fine-Tuning Diffusion Models on Differentiable Rewards") and AlignProp
(Prabhudesai et al. 2023) sample with the model being trained, score the final sample with a differentiable
reward, and backpropagate the reward's gradient into the model through the sampler. DRaFT-K keeps the
graph through the last ``K`` steps only; the paper finds ``K = 1`` as good as full backpropagation for its
aesthetic rewards at a fraction of the cost. For adherence on ``shapes`` it was not: on the training grid
K = 1 of 10 steps scored 0.625 against the base's 0.688, K = 10 scored 1.000 (docs/REWARD_FINETUNE.md), so
the recipes set K.

Rollouts are guided (``w = guidance_scale``, both branches from the model being trained), as the model
will be sampled. The reward is *adherence*: the *reward* judge's log-likelihood of what the prompt asks
for (:func:`studio.trainers.rewards.label_log_likelihood`), so the eval judge, trained apart, measures how
much of the gain is real and how much is the reward judge being fooled. A data term keeps the model on
the world, the pretraining loss on noised world samples of the same captions, with condition dropout so
that the unconditional branch guidance depends on keeps its meaning. An optional anchor keeps the model
near the base *on its own rollouts*, where the data term does not look: the squared difference of the
model's and the frozen base's outputs, both branches, at one state of each rollout. That is DPOK's bound
on the KL divergence between the finetuned and the base sampler (Fan et al. 2023, "DPOK"). Without it,
one of two ``reward-shapes`` seeds drifted to one background (docs/REWARD_FINETUNE.md). The anchor does
not ask two samples of one prompt to differ, and anchored runs lost diversity; an optional diversity
reward does, as in CFG distillation (:func:`studio.trainers.rewards.pair_diversity`): each caption is rolled
out twice, ``x_0¹`` and ``x_0²``, and ``D = 1 − cos(E(x_0¹), E(x_0²))`` with ``E`` the reward judge's
embedding, backpropagated through the same rollouts as the adherence reward::

    L = −λ_r · r(x_0(c), c) − β · D + λ_d · ‖f(x_t, t, c) − target‖² + λ_a · ‖f(x_s, s, ·) − f_base(x_s, s, ·)‖²
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from studio.guidance import DEFAULT_GUIDANCE, GuidedConfig, apply_condition_dropout
from studio.models.zoo import world_of
from studio.sampling import DDIMSampler
from studio.trainers.config import TrainerConfig, sample_generator
from studio.trainers.launch import training_hardware
from studio.trainers.rewards import DiversityReward, Scores, build_reward, check_reward, decode_samples, score
from studio.trainers.student import StudentTrainer
from studio.worlds import sample_seed


@dataclass(kw_only=True)
class RewardFinetuneConfig(GuidedConfig, TrainerConfig):
    """Finetuning a base model on the adherence reward by backpropagation through its sampler.

    Attributes:
        base: the model to finetune: an embedded name (``shapes``, ``synth``) or a pipeline folder.
        world: the world whose captions train it and whose judges score it (default: ``base``'s).
        data_seed: base seed of the world caption/data stream.
        guidance_scale: the guidance ``w`` of the rollouts (1: unguided).
        guidance_rescale, guidance_interval: the rollouts' guidance refinements (:class:`studio.guidance.Guidance`),
            as the model will be sampled.
        sample_steps: DDIM steps of a rollout.
        backprop_steps: the last steps of a rollout that carry gradients (DRaFT-K's ``K``).
        gradient_checkpointing: recompute the UNet activations of each backpropagated rollout step in the backward
            pass, so memory grows with one step instead of ``K`` (on in every run so far; off trades memory for
            ~1/3 less compute per backpropagated step).
        reward: the reward ``λ_r`` weighs: a name in :data:`studio.trainers.rewards.REWARDS` (``adherence``: the
            reward judge's log-likelihood of what the caption asks for) or ``module.path:callable``, a
            differentiable scorer of decoded samples and their prompts (:class:`studio.trainers.rewards.Reward`).
        attributes: the attributes the adherence reward scores (empty: every attribute a caption names).
        reward_weight: ``λ_r``.
        data_weight: ``λ_d``; 0 trains on the reward alone (and lets the model drift from the world).
        anchor_weight: ``λ_a``, the weight of the base-model anchor on rollout states (0: none).
        diversity_weight: ``β``, the weight of the diversity reward; > 0 rolls each caption out twice, so a
            step costs two rollouts per caption (halve ``batch_size`` to keep its cost).
        condition_dropout: fraction of the data term's captions replaced by the empty prompt.
        sample_prompts: held-out prompts in the sample grid during training.
        export: also write the finetuned pipeline here.
    """

    base: str = "synth"
    world: str | None = None
    data_seed: int = 8642
    guidance_scale: float = DEFAULT_GUIDANCE
    guidance_rescale: float = 0.0
    guidance_interval: tuple[float, float] = (0.0, 1.0)
    sample_steps: int = 10
    backprop_steps: int = 1
    gradient_checkpointing: bool = True
    reward: str = "adherence"
    attributes: tuple[str, ...] = ()
    reward_weight: float = 1.0
    data_weight: float = 1.0
    anchor_weight: float = 0.0
    diversity_weight: float = 0.0
    condition_dropout: float = 0.1
    sample_prompts: int = 8
    export: Path | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.guidance_interval = self.guidance.interval
        self.world = world_of(self.base, self.world)
        if min(self.sample_steps, self.backprop_steps) < 1:
            raise ValueError("sample_steps and backprop_steps must be >= 1")
        if self.backprop_steps > self.sample_steps:
            raise ValueError(f"backprop_steps {self.backprop_steps} exceeds sample_steps {self.sample_steps}")
        for name in ("reward_weight", "data_weight", "anchor_weight", "diversity_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.reward_weight == self.data_weight == self.diversity_weight == 0:
            raise ValueError(
                "reward_weight, data_weight and diversity_weight are all 0: nothing to train; set one > 0"
            )
        if self.anchor_weight > 0 and not self.rolls_out:
            raise ValueError(
                "anchor_weight > 0 anchors the rollouts, but reward_weight and diversity_weight are 0 (no "
                "rollouts); set one > 0"
            )
        if not 0 <= self.condition_dropout <= 1:
            raise ValueError(f"condition_dropout must be in [0, 1], got {self.condition_dropout}")
        self.attributes = tuple(self.attributes)
        check_reward(self.reward)
        if self.attributes and self.reward != "adherence":
            raise ValueError(
                f"attributes {list(self.attributes)} choose what the adherence reward scores, but reward is "
                f"{self.reward!r}; leave attributes empty or set reward=adherence"
            )

    @property
    def rolls_out(self) -> bool:
        """Whether a step samples rollouts (a reward on them has weight > 0)."""
        return self.reward_weight > 0 or self.diversity_weight > 0


class RewardFinetuneTrainer(StudentTrainer):
    """Trains :class:`RewardFinetuneConfig`'s model on the reward judge's adherence through its own samples."""

    config: RewardFinetuneConfig

    def build(self) -> None:
        cfg = self.config
        self.load_base(cfg.base, cfg.world)
        self.guidance = cfg.guidance
        self.sampler = DDIMSampler(self.alphas_cumprod, self.prediction_type, cfg.sample_steps, clip_x0=self.clip_x0)
        self.scorer = build_reward(cfg.reward, self.world.name, cfg.attributes)
        self.vocabulary = getattr(self.scorer, "vocabulary", {})  # what the adherence reward scores
        self.diversity = DiversityReward(self.world.name) if cfg.diversity_weight > 0 else None
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def reward(
        self, samples, embeds, mask, gens, trajectory: list[torch.Tensor] | None = None
    ) -> tuple[Scores, torch.Tensor]:
        """The reward's :class:`Scores` of one rollout per sample of these captions, and the decoded rollouts.

        For ``adherence`` the scores are :func:`label_log_likelihood`'s reward, with its hits logged. Each
        rollout starts from a draw of its generator; ``trajectory``, if given, receives the rollouts' states
        (see :meth:`DDIMSampler.sample`).
        """
        cfg = self.config
        x_T = torch.stack([torch.randn(self.sample_shape(), generator=g) for g in gens]).to(embeds.device)
        predict = self.guided_predictor(embeds, mask)
        x_0 = self.sampler.sample(
            predict, x_T, grad_steps=cfg.backprop_steps, checkpointed=cfg.gradient_checkpointing, trajectory=trajectory
        )
        decoded = decode_samples(self.pipe, x_0)
        return score(self.scorer, decoded, [s.caption for s in samples]), decoded

    def anchor_loss(self, trajectory: list[torch.Tensor], embeds, mask, gens) -> torch.Tensor:
        """``‖f − f_base‖²`` of both branches at one random state of each sample's rollout."""
        device = embeds.device
        k = torch.stack([torch.randint(0, len(trajectory), (), generator=g) for g in gens]).to(device)
        x = torch.stack(trajectory)[k, torch.arange(len(k), device=device)]
        t = self.sampler.timesteps.to(device)[k]
        both = self.with_unconditional(embeds, mask)
        x, t = torch.cat([x, x]), t.repeat(2)
        with torch.no_grad():
            target = self.predictor(self.teacher, *both)(x, t)
        return F.mse_loss(self.predictor(self.model, *both)(x, t).float(), target.float())

    def rollout_losses(self, samples, embeds, mask, gens) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted reward, diversity and anchor terms of these captions' rollouts, and their metrics.

        With a diversity reward each caption is rolled out twice, from two successive draws of its generator.
        """
        cfg = self.config
        copies = 2 if cfg.diversity_weight > 0 else 1
        if copies > 1:
            samples = [s for s in samples for _ in range(copies)]
            embeds = embeds.repeat_interleave(copies, 0)
            mask = None if mask is None else mask.repeat_interleave(copies, 0)
            gens = [g for g in gens for _ in range(copies)]
        trajectory = [] if cfg.anchor_weight > 0 else None
        scores, decoded = self.reward(samples, embeds, mask, gens, trajectory)
        loss = -cfg.reward_weight * scores.reward.mean()
        metrics = {"reward": scores.reward.mean().item(), **{k: v.mean().item() for k, v in scores.logged.items()}}
        if copies > 1:
            diversity = score(self.diversity, decoded, [s.caption for s in samples]).reward.mean()
            loss = loss - cfg.diversity_weight * diversity
            metrics["diversity_reward"] = diversity.item()
        if trajectory:
            anchor = self.anchor_loss(trajectory, embeds, mask, gens)
            loss = loss + cfg.anchor_weight * anchor
            metrics["anchor_mse"] = anchor.item()
        return loss, metrics

    def data_loss(self, samples, embeds, mask, gens) -> torch.Tensor:
        """The pretraining loss on noised world samples of the same captions (condition dropout included)."""
        cfg, device = self.config, self.accelerator.device
        x_0 = self.encode_data(samples)
        noise = torch.stack([torch.randn(self.sample_shape(), generator=g) for g in gens]).to(device)
        t = torch.stack([torch.randint(0, len(self.alphas_cumprod), (), generator=g) for g in gens]).to(device)
        drop = torch.stack([torch.rand((), generator=g) < cfg.condition_dropout for g in gens])
        embeds, mask = apply_condition_dropout(embeds, self.null_embeds, drop, mask, self.null_mask)
        x_t = self.noise_scheduler.add_noise(x_0, noise, t)
        target = noise if self.prediction_type == "epsilon" else self.noise_scheduler.get_velocity(x_0, noise, t)
        return F.mse_loss(self.predictor(self.model, embeds, mask)(x_t, t).float(), target.float())

    def train_step(self, indices: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        samples = [self.world.sample(sample_seed(cfg.data_seed, i)) for i in indices]
        gens = [sample_generator(cfg.seed, self.step, i) for i in indices]
        embeds, mask = self.encode([s.caption for s in samples])
        loss, metrics = torch.zeros((), device=embeds.device), {}
        if cfg.rolls_out:
            loss, metrics = self.rollout_losses(samples, embeds, mask, gens)
        if cfg.data_weight > 0:
            data = self.data_loss(samples, embeds, mask, gens)
            loss = loss + cfg.data_weight * data
            metrics["data_mse"] = data.item()
        if cfg.rolls_out:
            metrics["reward_queries"] = float(self.reward_queries(self.step + 1))
        return loss, metrics

    def reward_queries(self, steps: int) -> int:
        """Reward queries of ``steps`` steps over all processes: the rollouts handed to the reward (one query per
        rollout, however many reward terms score it), the count that compares reward trainers' sample efficiency."""
        cfg = self.config
        return steps * cfg.batch_size * (2 if cfg.diversity_weight > 0 else 1) if cfg.rolls_out else 0

    def evaluate(self) -> dict[str, float]:
        """Sample held-out prompts at the rollouts' guidance: a grid and eval-judge scores."""
        cfg = self.config
        return self.student_grid(
            cfg.sample_prompts,
            cfg.guidance_scale,
            guidance_rescale=cfg.guidance_rescale,
            guidance_interval=cfg.guidance_interval,
        )

    def model_card(self, metrics: dict[str, float]) -> str:
        cfg = self.config
        scored = ", ".join(self.vocabulary)
        refinements = self.guidance.refinements()
        refined = f" ({', '.join(refinements)})" if refinements else ""
        hardware = training_hardware(self.accelerator.device, self.accelerator.num_processes)
        diversity = (
            f", diversity-reward weight {cfg.diversity_weight:g} (two rollouts per caption)"
            if cfg.diversity_weight
            else ""
        )
        what = f"The reward judge's log-likelihood of what each prompt asks for ({scored})"
        if cfg.reward != "adherence":
            what = f"The reward `{cfg.reward}`"
        return f"""# `{cfg.base}` finetuned on the {cfg.reward} reward (DRaFT-{cfg.backprop_steps})

{what}, backpropagated through the
last {cfg.backprop_steps} of {cfg.sample_steps} DDIM steps of rollouts guided at w={cfg.guidance_scale:g}{refined};
reward weight {cfg.reward_weight:g}, pretraining-loss weight {cfg.data_weight:g}, base-anchor weight
{cfg.anchor_weight:g}{diversity}.

- Made by: `{self.command or "mixstudio train reward-" + str(cfg.world)}`
- Steps: {metrics["steps"]} at batch {cfg.batch_size} (lr {cfg.lr}, seed {cfg.seed})
- Wall time: {metrics["train_minutes"]:.1f} min on {hardware}
- Eval-judge adherence of the final sample grid ({cfg.sample_prompts} held-out prompts x 2, 25 DDIM steps,
  w={cfg.guidance_scale:g}): {metrics.get("sample_adherence", float("nan")):.3f}

See `docs/REWARD_FINETUNE.md` for the reward-judge against eval-judge comparison.
"""
