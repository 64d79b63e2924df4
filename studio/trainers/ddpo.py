"""DDPO: policy-gradient finetuning of a diffusion model's sampler with PPO (Black, Janner et al. 2023).

DDPO ("Training Diffusion Models with Reinforcement Learning", Black, Janner, Du, Kostrikov, Levine 2023) treats
denoising as a multi-step decision process. Each stochastic DDIM step (η > 0) is an action of a Gaussian policy
``π_θ(x_{t−1} | x_t, c)`` whose log-probability is closed form (:func:`studio.sampling.ddim_step_with_logprob`), and
the reward ``r(x_0, c)`` comes at the end; the reward needs no gradient. One round:

1. Sample ``batch_size`` trajectories, ``samples_per_prompt`` of each of ``batch_size / samples_per_prompt`` world
   captions, with the model being trained, guided as it will be sampled (both branches from the model); keep
   each step's state, action ``x_{t−1}`` and log-probability.
2. Score the final samples with the reward: one reward query per trajectory.
3. Normalise the rewards per prompt (:class:`studio.trainers.stat_tracker.PerPromptStatTracker`), pooled over
   every process's rewards, and clip the advantages to ``±advantage_clip``.
4. ``inner_epochs`` PPO updates (the paper's importance-sampled estimator, DDPO_IS, with PPO's clip)::

       L(θ) = 1/|S| Σ_{t ∈ S} mean_i max(−A_i ρ_{i,t}, −A_i clip(ρ_{i,t}, 1 − ε, 1 + ε)),
       ρ_{i,t} = π_θ(x_{t−1} | x_t, c_i) / π_old(x_{t−1} | x_t, c_i)

   over a random subset ``S`` of ``timestep_fraction`` of the stochastic steps, drawn anew for each update and
   shared by the round's trajectories (so each UNet call is the batch the sampler made, and the first update's
   ratio is exactly 1). Each step's UNet call is backpropagated on its own: memory of one call, gradients summed.

With the samplers' ``ᾱ_prev = 1`` past the last timestep, the last DDIM step is deterministic (σ = 0: it returns
the model's ``x_0``), so it has no log-probability; the policy's actions are the first ``sample_steps − 1``
steps, and the last is part of how the reward scores ``x_1``.

**How a round fits the trainer skeleton.** One :meth:`DDPOTrainer.train_step` is one round: it samples, scores,
takes the first ``inner_epochs − 1`` updates itself (:meth:`Trainer.apply_gradients`) and returns the last
update's loss for the skeleton to take. So ``step`` and ``max_steps`` count rounds, the learning-rate schedule
advances once per round, and a checkpoint always falls between rounds, where the state is only weights, optimizer,
schedule, step and the stat tracker (extra state): a resumed run samples the next round exactly as an uninterrupted
one. The other layout, one ``train_step`` per update with sampling every ``k`` steps, would have to checkpoint a
round's trajectories whenever a checkpoint falls inside a round, because they are on-policy only for the weights
that sampled them.

Written from the paper and its authors' code (kvablack/ddpo-pytorch: ``ddim_with_logprob.py``, ``train.py``,
``stat_tracking.py``) and TRL's former ``DDPOTrainer``; defaults follow them (ε = 1e-4, advantage clip 5, η = 1,
LoRA).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from studio.adapters import (
    DEFAULT_TARGETS,
    adapter_state_dict,
    add_adapter,
    bake_adapters,
    config_from_options,
    config_to_dict,
    save_adapter,
)
from studio.guidance import DEFAULT_GUIDANCE, GuidedConfig
from studio.models.zoo import world_of
from studio.sampling import DDIMSampler, StepLogProb, ddim_step_with_logprob
from studio.trainers.config import STEP_DRAW, TrainerConfig, sample_generator
from studio.trainers.launch import training_hardware
from studio.trainers.rewards import build_reward, check_reward, decode_samples, score
from studio.trainers.stat_tracker import PerPromptStatTracker
from studio.trainers.student import StudentTrainer
from studio.worlds import sample_seed

#: The adapter's name in the UNet, and the ``adapter.method`` that trains every weight instead.
ADAPTER = "ddpo"
FULL = "full"


@dataclass(kw_only=True)
class DDPOConfig(GuidedConfig, TrainerConfig):
    """DDPO with PPO updates on a reward of the final samples (``batch_size`` is trajectories per round).

    Attributes:
        base: the model to finetune: an embedded name (``shapes``, ``synth``) or a pipeline folder.
        world: the world whose captions train it and whose judges score it (default: ``base``'s).
        data_seed: base seed of the world caption stream.
        caption_pool: train on the first ``caption_pool`` captions of the stream, in turn, so that captions recur
            and the stat tracker's per-caption buffers fill across rounds, as with the paper's fixed prompt lists
            (None: fresh captions every round; the world's captions rarely repeat, so each caption is then
            normalised by its own round's ``samples_per_prompt`` rewards, or the round's).
        guidance_scale: the guidance ``w`` of the policy (1: unguided).
        guidance_rescale, guidance_interval: the policy's guidance refinements (:class:`studio.guidance.Guidance`),
            as the model will be sampled.
        sample_steps: DDIM steps of a trajectory; the first ``sample_steps − 1`` are the policy's actions.
        eta: the DDIM noise scale η > 0 of the policy (1: DDPM's posterior variance, as the paper).
        samples_per_prompt: trajectories per caption in a round; ``batch_size`` must be a multiple of it.
        clip_range: PPO's ``ε``; the ratio is of per-dimension mean log-probabilities (paper: 1e-4).
        advantage_clip: advantages are clipped to ``±advantage_clip`` (the authors' code: 5-10).
        inner_epochs: PPO updates per round, each over the round's whole batch.
        timestep_fraction: the fraction of the policy steps each update trains on, drawn at random per update.
        stat_buffer_size: rewards the stat tracker keeps per prompt.
        stat_min_count: rewards a prompt needs before its own statistics normalise it (else the batch's).
        reward: a name in :data:`studio.trainers.rewards.REWARDS` (``adherence``: the reward judge's log-likelihood
            of what the caption asks for, as ``reward-shapes``) or ``module.path:callable`` (any scorer of decoded
            samples and prompts; it needs no gradient here).
        attributes: the attributes the adherence reward scores (empty: every attribute a caption names).
        adapter: ``{"method": name, **hyperparameters}`` of ``studio.adapters.METHODS`` (``--set adapter.rank=8``),
            or ``{"method": "full"}`` to train every UNet weight.
        targets: UNet module-name patterns that get the adapter.
        sample_prompts: held-out prompts in the sample grid during training.
        export: also write the finetuned pipeline here.
    """

    base: str = "shapes"
    world: str | None = None
    data_seed: int = 8642
    caption_pool: int | None = None
    guidance_scale: float = DEFAULT_GUIDANCE
    guidance_rescale: float = 0.0
    guidance_interval: tuple[float, float] = (0.0, 1.0)
    sample_steps: int = 10
    eta: float = 1.0
    samples_per_prompt: int = 4
    clip_range: float = 1e-4
    advantage_clip: float = 5.0
    inner_epochs: int = 1
    timestep_fraction: float = 1.0
    stat_buffer_size: int = 16
    stat_min_count: int = 4
    reward: str = "adherence"
    attributes: tuple[str, ...] = ()
    adapter: dict[str, Any] = field(default_factory=lambda: {"method": "lora"})
    targets: tuple[str, ...] = DEFAULT_TARGETS
    sample_prompts: int = 8
    export: Path | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.guidance_interval = self.guidance.interval
        self.world = world_of(self.base, self.world)
        self.attributes, self.targets = tuple(self.attributes), tuple(self.targets)
        if self.sample_steps < 2:
            raise ValueError(
                f"sample_steps must be >= 2 (the last DDIM step is deterministic), got {self.sample_steps}"
            )
        for name in ("eta", "clip_range", "advantage_clip"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("inner_epochs", "samples_per_prompt", "stat_buffer_size", "stat_min_count", "sample_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.caption_pool is not None and self.caption_pool < 1:
            raise ValueError(f"caption_pool must be >= 1 or none, got {self.caption_pool}")
        if self.batch_size % self.samples_per_prompt:
            raise ValueError(
                f"batch_size {self.batch_size} is not a multiple of samples_per_prompt {self.samples_per_prompt}; "
                "a round samples whole groups of one caption"
            )
        if not 0 < self.timestep_fraction <= 1 or self.trained_steps < 1:
            raise ValueError(
                f"timestep_fraction must be in (0, 1] and leave at least one of the {self.sample_steps - 1} policy "
                f"steps to train, got {self.timestep_fraction}"
            )
        PerPromptStatTracker(self.stat_buffer_size, self.stat_min_count)  # raises naming the bad setting
        check_reward(self.reward)
        if self.attributes and self.reward != "adherence":
            raise ValueError(
                f"attributes {list(self.attributes)} choose what the adherence reward scores, but reward is "
                f"{self.reward!r}; leave attributes empty or set reward=adherence"
            )
        self.adapter = check_adapter_options(self.adapter)

    @property
    def trained_steps(self) -> int:
        """Policy steps each PPO update trains on: ``int(timestep_fraction · (sample_steps − 1))``."""
        return int(self.timestep_fraction * (self.sample_steps - 1))


def check_adapter_options(options: dict[str, Any]) -> dict[str, Any]:
    """``{"method": "full"}``, or adapter options typed by their method's config (text from ``--set`` parsed).

    Raises:
        ValueError: for options given with ``full``, or from :func:`studio.adapters.config_from_options`.
    """
    if options.get("method") == FULL:
        extra = sorted(set(options) - {"method"})
        if extra:
            raise ValueError(f"adapter.method=full trains every weight and takes no options, got {extra}")
        return {"method": FULL}
    typed = config_to_dict(config_from_options(options))
    return {"method": options["method"], **{k: typed[k] for k in options if k != "method"}}


@dataclass
class PPOTerms:
    """The clipped surrogate of a batch of actions: per-sample ``loss`` ``(B,)`` and importance ``ratio`` ``(B,)``."""

    loss: torch.Tensor
    ratio: torch.Tensor


def ppo_clip_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip_range: float
) -> PPOTerms:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7) as a loss: ``max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε))``.

    Example: ``A = 1`` and ``ρ = 1.5`` with ``ε = 0.2`` gives ``max(−1.5, −1.2) = −1.2`` (no gain beyond the clip);
    ``A = −1`` and ``ρ = 0.5`` gives ``max(0.5, 0.8) = 0.8``.

    Args:
        log_prob: ``(B,)`` log-probabilities of the actions under the policy being trained.
        old_log_prob: ``(B,)`` their log-probabilities under the policy that sampled them.
        advantages: ``(B,)``.
        clip_range: ``ε``.
    """
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)
    return PPOTerms(loss=torch.maximum(unclipped, clipped), ratio=ratio)


@dataclass
class Round:
    """This process's trajectories of one round (``S`` policy steps, ``B`` trajectories)."""

    prompts: list[str]
    embeds: torch.Tensor
    mask: torch.Tensor | None
    states: list[torch.Tensor]  # S × (B, C, H, W): the input x_t of each policy step
    actions: list[torch.Tensor]  # S × (B, C, H, W): the x_{t−1} it drew
    log_probs: list[torch.Tensor]  # S × (B,): their log-probabilities under the sampling policy
    samples: torch.Tensor  # (B, C, H, W): the final x_0, in model space


class DDPOTrainer(StudentTrainer):
    """Trains :class:`DDPOConfig`'s model by DDPO: one ``train_step`` is one round (see the module docstring)."""

    config: DDPOConfig

    def build(self) -> None:
        cfg = self.config
        self.load_base(cfg.base, cfg.world)
        if cfg.adapter["method"] != FULL:
            generator = torch.Generator().manual_seed(cfg.seed)
            add_adapter(self.model, ADAPTER, config_from_options(cfg.adapter), cfg.targets, generator=generator)
        self.guidance = cfg.guidance
        self.sampler = DDIMSampler(self.alphas_cumprod, self.prediction_type, cfg.sample_steps, cfg.eta, self.clip_x0)
        self.scorer = build_reward(cfg.reward, self.world.name, cfg.attributes)
        self.tracker = PerPromptStatTracker(cfg.stat_buffer_size, cfg.stat_min_count)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    @property
    def policy_steps(self) -> int:
        """The stochastic steps of a trajectory (every DDIM step but the last)."""
        return len(self.sampler.timesteps) - 1

    # ---- sampling -----------------------------------------------------------------------------
    def caption(self, index: int) -> str:
        """The caption of global sample ``index``: world caption ``index // samples_per_prompt`` (of the pool)."""
        cfg = self.config
        group = index // cfg.samples_per_prompt
        if cfg.caption_pool is not None:
            group %= cfg.caption_pool
        return self.world.sample(sample_seed(cfg.data_seed, group)).caption

    def policy_step(self, predict, x: torch.Tensor, index: int, **action: torch.Tensor) -> StepLogProb:
        """Policy step ``index`` from ``x``: draw an action (``noise=``) or score a given one (``prev_sample=``)."""
        cfg, (batch, device) = self.config, (len(x), x.device)
        t = self.sampler.timesteps[index].to(device).expand(batch)
        a_t, a_prev = self.sampler.alphas(index, batch, device)
        output = predict(x, t)
        return ddim_step_with_logprob(output, x, a_t, a_prev, self.prediction_type, cfg.eta, self.clip_x0, **action)

    @torch.no_grad()
    def sample_round(self, indices: list[int]) -> Round:
        """This process's trajectories of the current round; each draws its noise from its own generator."""
        device = self.accelerator.device
        prompts = [self.caption(i) for i in indices]
        gens = [sample_generator(self.config.seed, self.step, i) for i in indices]
        embeds, mask = self.encode(prompts)
        predict = self.guided_predictor(embeds, mask)

        def draw() -> torch.Tensor:
            return torch.stack([torch.randn(self.sample_shape(), generator=g) for g in gens]).to(device)

        x, states, actions, log_probs = draw(), [], [], []
        for index in range(self.policy_steps):
            step = self.policy_step(predict, x, index, noise=draw())
            states.append(x)
            actions.append(step.prev_sample)
            log_probs.append(step.log_prob)
            x = step.prev_sample
        x_0, _ = self.sampler.step(predict, x, self.policy_steps, torch.zeros_like(x))  # σ = 0: the model's x_0
        return Round(prompts, embeds, mask, states, actions, log_probs, x_0)

    def advantages(self, rewards: torch.Tensor, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(this process's advantages, every process's rewards)``: the tracker sees the whole round's rewards.

        Every process gathers the round's rewards in global order and runs the same tracker update, so the
        trackers stay identical and any process layout computes one process's advantages.
        """
        cfg = self.config
        pooled = self.accelerator.gather(rewards.detach().float().contiguous())
        first = self.step * cfg.batch_size
        prompts = [self.caption(i) for i in range(first, first + cfg.batch_size)]
        advantages = self.tracker.update(prompts, pooled)
        local = advantages[[i - first for i in indices]]
        return local.clamp(-cfg.advantage_clip, cfg.advantage_clip), pooled

    # ---- the PPO update -----------------------------------------------------------------------
    def ppo_update(
        self, batch: Round, advantages: torch.Tensor, chosen: list[int], take: bool
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One PPO update over the ``chosen`` policy steps, one backward per step (gradients accumulate).

        The backward of the last chosen step is the one that synchronises gradients across processes. With
        ``take`` the update is applied here (:meth:`apply_gradients`); without it, the last step's loss is returned
        un-backpropagated, for the skeleton to backpropagate and apply.

        Returns:
            The update's loss (with ``take``, detached; without, the last step's term plus the detached value of
            the terms already backpropagated, so its value is the whole update's), and the update's approximate
            KL divergence and clip fraction.
        """
        cfg = self.config
        predict = self.guided_predictor(batch.embeds, batch.mask)
        done, kl, clipped = torch.zeros((), device=advantages.device), 0.0, 0.0
        for n, index in enumerate(chosen):
            step = self.policy_step(predict, batch.states[index], index, prev_sample=batch.actions[index])
            terms = ppo_clip_loss(step.log_prob, batch.log_probs[index], advantages, cfg.clip_range)
            loss = terms.loss.mean() / len(chosen)
            kl += 0.5 * (step.log_prob.detach() - batch.log_probs[index]).square().mean().item() / len(chosen)
            clipped += ((terms.ratio.detach() - 1).abs() > cfg.clip_range).float().mean().item() / len(chosen)
            if n == len(chosen) - 1 and not take:
                return loss + done, {"approx_kl": kl, "clipfrac": clipped}
            if n < len(chosen) - 1:
                with self.accelerator.no_sync(self.model):
                    self.accelerator.backward(loss)
            else:
                self.accelerator.backward(loss)
            done = done + loss.detach()
        self._check_finite(done, "the loss")
        self.apply_gradients()
        return done, {"approx_kl": kl, "clipfrac": clipped}

    def train_step(self, indices: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        """One round: sample, score, normalise, ``inner_epochs − 1`` updates here and the last one returned."""
        cfg = self.config
        batch = self.sample_round(indices)
        with torch.no_grad():
            scores = score(self.scorer, decode_samples(self.pipe, batch.samples), batch.prompts)
        advantages, pooled = self.advantages(scores.reward, indices)
        draws = sample_generator(cfg.seed, self.step, STEP_DRAW)
        stats: dict[str, float] = {"approx_kl": 0.0, "clipfrac": 0.0}
        for epoch in range(cfg.inner_epochs):
            chosen = sorted(torch.randperm(self.policy_steps, generator=draws)[: cfg.trained_steps].tolist())
            loss, update = self.ppo_update(batch, advantages, chosen, take=epoch < cfg.inner_epochs - 1)
            stats = {k: v + update[k] / cfg.inner_epochs for k, v in stats.items()}
        metrics = {
            "reward": pooled.mean().item(),
            "reward_std": pooled.std(correction=0).item(),
            **{k: v.float().mean().item() for k, v in scores.logged.items()},
            **stats,
            "reward_queries": float((self.step + 1) * cfg.batch_size),
        }
        return loss, metrics

    # ---- checkpoints: the adapter alone (or every weight) and the stat tracker ----------------------
    @property
    def uses_adapter(self) -> bool:
        return self.config.adapter["method"] != FULL

    def trainable_state(self) -> dict[str, torch.Tensor]:
        if not self.uses_adapter:
            return super().trainable_state()
        unet = self.accelerator.unwrap_model(self.model)
        return {k: v.cpu().contiguous() for k, v in adapter_state_dict(unet, ADAPTER).items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        if not self.uses_adapter:
            return super().load_trainable_state(state)
        own = adapter_state_dict(self.accelerator.unwrap_model(self.model), ADAPTER)  # views of the parameters
        if own.keys() != state.keys():
            missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
            raise ValueError(f"adapter state does not match (missing {missing[:2]}, unexpected {unexpected[:2]})")
        with torch.no_grad():
            for key, value in state.items():
                own[key].copy_(value)

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {f"stat_tracker.{k}": v for k, v in self.tracker.state_dict().items()}

    def load_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        self.tracker.load_state_dict({k.removeprefix("stat_tracker."): v for k, v in state.items()})

    # ---- sampling and export ------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Sample held-out prompts at the policy's guidance (deterministic DDIM): a grid and eval-judge scores."""
        cfg = self.config
        return self.student_grid(
            cfg.sample_prompts,
            cfg.guidance_scale,
            guidance_rescale=cfg.guidance_rescale,
            guidance_interval=cfg.guidance_interval,
        )

    def export(self, metrics: dict[str, float]) -> Path | None:
        """Write the finetuned pipeline (an adapter baked into a copy of the UNet) and, with one, the adapter file."""
        cfg, unet = self.config, self.accelerator.unwrap_model(self.model)
        if self.uses_adapter:
            save_adapter(unet, ADAPTER, self.out / "adapter.safetensors", base_model_id=cfg.base)
            unet = copy.deepcopy(unet)
            bake_adapters(unet)
        self.pipe.unet = unet.eval()
        try:
            return self.write_model(self.pipe.save_pretrained, metrics, self.model_card(metrics))
        finally:
            self.pipe.unet = self.teacher

    def model_card(self, metrics: dict[str, float]) -> str:
        cfg = self.config
        refinements = self.guidance.refinements()
        refined = f" ({', '.join(refinements)})" if refinements else ""
        hardware = training_hardware(self.accelerator.device, self.accelerator.num_processes)
        trained = "every UNet weight" if not self.uses_adapter else f"an adapter ({cfg.adapter})"
        return f"""# `{cfg.base}` finetuned by DDPO on the {cfg.reward} reward

PPO (clip ε={cfg.clip_range:g}, {cfg.inner_epochs} update(s) per round, each on {cfg.trained_steps} of the
{cfg.sample_steps - 1} policy steps) on rounds of {cfg.batch_size} trajectories ({cfg.samples_per_prompt} per
caption) of {cfg.sample_steps}-step DDIM with η={cfg.eta:g}, guided at w={cfg.guidance_scale:g}{refined};
advantages normalised per caption (buffer {cfg.stat_buffer_size}, min count {cfg.stat_min_count}). Trained:
{trained}.

- Made by: `{self.command or "mixstudio train ddpo-" + str(cfg.world)}`
- Rounds: {metrics["steps"]} ({metrics["steps"] * cfg.batch_size} reward queries; lr {cfg.lr}, seed {cfg.seed})
- Wall time: {metrics["train_minutes"]:.1f} min on {hardware}
- Eval-judge adherence of the final sample grid ({cfg.sample_prompts} held-out prompts x 2, {cfg.grid_steps} DDIM
  steps, w={cfg.guidance_scale:g}): {metrics.get("sample_adherence", float("nan")):.3f}

See `docs/REWARD_FINETUNE.md` for DDPO beside reward backpropagation.
"""
