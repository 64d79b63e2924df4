"""CFG distillation with a diversity reward (Diversity-Rewarded CFG Distillation, arXiv 2410.06084), for diffusion.

The student starts as a copy of the base model and learns to predict, *without* guidance, what the frozen
teacher predicts *with* guidance ``w`` at the same state, prompt and timestep::

    L_distil = ‖f_student(x_t, t, c) − [f(x_t, t, ∅) + w·(f(x_t, t, c) − f(x_t, t, ∅))]‖²

(``f`` is the model output, ε or v: guidance is linear in either). States ``x_t`` come on-policy from the
student's own unguided DDIM trajectories (a fraction ``on_policy``), the rest from noised world data. So
the student samples at one UNet call per step instead of two.

A *guidance-conditioned* student (``guidance_conditioned``) also reads ``w`` through a zero-initialised
embedding (``studio.models.unet.with_guidance_input``); each sample draws ``w ~ U[guidance_min,
guidance_scale]`` and the target uses that ``w``, so one student serves the whole guidance slider at 1× cost.

A diversity reward keeps the student's outputs varied: two samples of one prompt, ``D = 1 − cos(E(x1), E(x2))``
with ``E`` the *reward* judge's embedding (the eval judge stays untouched, so reward hacking shows as a gap).
The objective maximised is ``−L_distil + β·D``, with ``D`` optimised either by backpropagating through the
last ``backprop_steps`` sampler steps (images through pixels or the VAE decoder, music through the mel
vocoder with its Griffin-Lim phase held fixed) or by REINFORCE over a stochastic (η = 1) trajectory with a
batch-mean baseline.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from studio.guidance import (
    GuidedConfig,
    cfg_combine,
    in_guidance_interval,
    rescale_guided,
)
from studio.models.unet import with_guidance_input
from studio.models.zoo import world_of
from studio.sampling import DDIMSampler, gaussian_log_prob
from studio.trainers.config import STEP_DRAW, TrainerConfig, sample_generator
from studio.trainers.launch import training_hardware
from studio.trainers.rewards import JudgeEmbedder, pair_diversity, pooled_statistics
from studio.trainers.student import StudentTrainer
from studio.worlds import sample_seed


@dataclass(kw_only=True)
class CFGDistillConfig(GuidedConfig, TrainerConfig):
    """Distilling a guided teacher into an unguided student, with an optional diversity reward.

    Attributes:
        base: teacher and student initialisation: an embedded name (``shapes``, ``synth``) or a pipeline folder.
        world: the world whose captions train the student and whose judges score it (default: ``base``'s).
        data_seed: base seed of the world caption/data stream.
        guidance_scale: the teacher's guidance ``w``.
        guidance_rescale, guidance_interval: the teacher's guidance refinements (:class:`studio.guidance.Guidance`):
            its target is rescaled by ``φ``, and outside the interval of noise levels it is the conditional
            prediction alone, as the pipelines sample with those settings.
        on_policy: fraction of distillation states taken from the student's own rollouts (rest: noised data).
        rollout_steps: DDIM steps of the rollout schedule; a state is taken at a uniformly drawn step of it.
        diversity_weight: ``β``; 0 trains the pure distillation ("quality") student.
        diversity_mode: ``backprop`` (through the sampler) or ``reinforce`` (policy gradient).
        diversity_prompts: prompts per step that get two reward samples each (≥ 2 for REINFORCE's baseline).
        diversity_steps: sampler steps of the reward rollouts.
        backprop_steps: steps that carry gradients: the last ones (backprop) or a random subset (REINFORCE).
        guidance_conditioned: the student reads ``w`` (one student for every scale in ``[guidance_min,
            guidance_scale]``); otherwise it learns the single scale ``guidance_scale``.
        guidance_min: lowest scale a guidance-conditioned student trains on.
        sample_prompts: held-out prompts in the sample grid during training.
        export: also write the student pipeline here (e.g. ``assets/models/shapes-distilled``).
    """

    base: str = "shapes"
    world: str | None = None
    data_seed: int = 4321
    guidance_scale: float = 4.0
    guidance_rescale: float = 0.0
    guidance_interval: tuple[float, float] = (0.0, 1.0)
    on_policy: float = 0.75
    rollout_steps: int = 10
    diversity_weight: float = 0.0
    diversity_mode: Literal["backprop", "reinforce"] = "backprop"
    diversity_prompts: int = 2
    diversity_steps: int = 8
    backprop_steps: int = 2
    guidance_conditioned: bool = False
    guidance_min: float = 1.0
    sample_prompts: int = 8
    export: Path | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.guidance_interval = self.guidance.interval
        if not (isinstance(self.guidance_min, (int, float)) and 0 <= self.guidance_min < math.inf):
            raise ValueError(f"guidance_min must be a finite number >= 0, got {self.guidance_min!r}")
        if self.guidance_conditioned and self.guidance_min > self.guidance_scale:
            raise ValueError(f"guidance_min {self.guidance_min} exceeds guidance_scale {self.guidance_scale}")
        self.world = world_of(self.base, self.world)
        if not 0 <= self.on_policy <= 1:
            raise ValueError(f"on_policy must be in [0, 1], got {self.on_policy}")
        if self.diversity_weight < 0:
            raise ValueError(f"diversity_weight must be >= 0, got {self.diversity_weight}")
        if min(self.rollout_steps, self.diversity_steps, self.backprop_steps) < 1:
            raise ValueError("rollout_steps, diversity_steps and backprop_steps must be >= 1")
        if self.backprop_steps > self.diversity_steps:
            raise ValueError(f"backprop_steps {self.backprop_steps} exceeds diversity_steps {self.diversity_steps}")
        if self.diversity_mode == "reinforce" and self.diversity_prompts < 2:
            raise ValueError("diversity_mode=reinforce needs diversity_prompts >= 2 (the baseline is the batch mean)")
        if self.diversity_prompts > self.batch_size:
            raise ValueError(f"diversity_prompts {self.diversity_prompts} exceeds batch_size {self.batch_size}")


class CFGDistillTrainer(StudentTrainer):
    """Trains the unguided student of :class:`CFGDistillConfig` against the frozen guided teacher."""

    config: CFGDistillConfig

    def build(self) -> None:
        cfg = self.config
        self.load_base(cfg.base, cfg.world, with_guidance_input if cfg.guidance_conditioned else copy.deepcopy)
        self.rollout = DDIMSampler(self.alphas_cumprod, self.prediction_type, cfg.rollout_steps, clip_x0=self.clip_x0)
        eta = 1.0 if cfg.diversity_mode == "reinforce" else 0.0
        self.reward_sampler = DDIMSampler(
            self.alphas_cumprod, self.prediction_type, cfg.diversity_steps, eta, self.clip_x0
        )
        self.embedder = None
        if cfg.diversity_weight > 0:
            self.embedder = JudgeEmbedder(self.pipe, self.world.name, "reward")
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    # ---- pieces -----------------------------------------------------------------------------
    def student_scales(self, gens: list[torch.Generator]) -> torch.Tensor | None:
        """Per-sample ``w ~ U[guidance_min, guidance_scale]`` for a guidance-conditioned student, else None."""
        cfg = self.config
        if not cfg.guidance_conditioned:
            return None
        u = torch.stack([torch.rand((), generator=g) for g in gens])
        return (cfg.guidance_min + (cfg.guidance_scale - cfg.guidance_min) * u).to(self.accelerator.device)

    def guided_target(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        embeds: torch.Tensor,
        mask: torch.Tensor | None,
        scales: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The teacher's guided output ``f_u + w·(f_c − f_u)`` in one doubled batch (``w``: per sample if given).

        With the config's guidance refinements, the output is rescaled by ``φ`` and, at samples whose
        noise level ``t / T`` lies outside the guidance interval, is the conditional output alone.
        """
        cfg = self.config
        out = self.predictor(self.teacher, *self.with_unconditional(embeds, mask))(torch.cat([x_t, x_t]), t.repeat(2))
        uncond, cond = out.chunk(2)
        guided = cfg_combine(uncond, cond, cfg.guidance_scale if scales is None else scales)
        guided = rescale_guided(guided, cond, cfg.guidance_rescale)
        t = t.float().reshape(-1, *([1] * (cond.ndim - 1)))
        return torch.where(in_guidance_interval(t, len(self.alphas_cumprod), cfg.guidance_interval), guided, cond)

    @torch.no_grad()
    def distillation_states(self, samples, gens, embeds, mask, scales=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_t, t)`` per sample: a state of the student's own unguided rollout, or noised world data."""
        cfg, device = self.config, self.accelerator.device
        shape = self.sample_shape()
        noise = torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device)
        on = torch.stack([torch.rand((), generator=g) < cfg.on_policy for g in gens]).to(device)
        k = torch.stack([torch.randint(0, cfg.rollout_steps, (), generator=g) for g in gens]).to(device)
        t_off = torch.stack([torch.randint(0, len(self.alphas_cumprod), (), generator=g) for g in gens]).to(device)
        t = torch.where(on, self.rollout.timesteps.to(device)[k], t_off)
        x_t = noise.clone()
        if (~on).any():
            off = (~on).nonzero().squeeze(1)
            x0 = self.encode_data([samples[i] for i in off.tolist()])
            a = self.alphas_cumprod.to(device)[t[off]].view(-1, 1, 1, 1)
            x_t[off] = a.sqrt() * x0 + (1 - a).sqrt() * noise[off]
        if on.any():
            idx = on.nonzero().squeeze(1)
            m = None if mask is None else mask[idx]
            predict = self.predictor(self.model, embeds[idx], m, None if scales is None else scales[idx])
            x = noise[idx]
            for i in range(int(k[idx].max())):
                x, _ = self.rollout.step(predict, x, i)
                done = k[idx] == i + 1
                x_t[idx[done]] = x[done]
        return x_t, t

    def diversity_loss(self, embeds, mask, gens, scales=None) -> tuple[torch.Tensor, float]:
        """``(loss, mean reward)`` of two student samples for each of this process's diversity prompts.

        The step's reward prompts are the first ``diversity_prompts`` of the global batch, on whichever
        processes hold them (a process may hold none). Data-parallel gradients are averaged over
        processes, so the local loss is the sum over local samples times ``processes / count``, and the
        reward statistics (REINFORCE's baseline, the logged mean) are reduced over processes: every
        process layout computes one process's update.
        """
        cfg, device = self.config, self.accelerator.device
        weight = self.accelerator.num_processes / cfg.diversity_prompts  # per prompt pair
        if not gens:  # this process holds none of the step's reward prompts; it still joins the reduction
            nothing = torch.zeros(0, device=device)
            return torch.zeros((), device=device), pooled_statistics(nothing, self.accelerator)[0]
        embeds = embeds.repeat_interleave(2, 0)
        mask = None if mask is None else mask.repeat_interleave(2, 0)
        scales = None if scales is None else scales.repeat_interleave(2, 0)
        x_T = torch.stack([torch.randn(self.sample_shape(), generator=g) for g in gens for _ in range(2)]).to(device)
        predict = self.predictor(self.model, embeds, mask, scales)
        if cfg.diversity_mode == "backprop":
            emb = self.embedder(self.reward_sampler.sample(predict, x_T, grad_steps=cfg.backprop_steps))
            reward = pair_diversity(emb[0::2], emb[1::2])
            return -weight * reward.sum(), pooled_statistics(reward, self.accelerator)[0]
        return self.reinforce_loss(predict, x_T, gens, weight / 2)

    def reinforce_loss(self, predict, x_T: torch.Tensor, gens, weight: float) -> tuple[torch.Tensor, float]:
        """REINFORCE on an η = 1 trajectory: ``−Σ weight · A · log p`` over a random subset of its stochastic steps.

        ``log p`` is the per-dimension mean log-density of each chosen step (the scale of a sum over
        thousands of pixels would swamp the distillation loss); ``A`` is the pair's reward minus the mean
        over every process's pairs, divided by their standard deviation. Each sample's noise comes from
        its prompt's generator and the chosen steps from one draw per training step, so the update does
        not depend on the process layout.
        """
        cfg, sampler = self.config, self.reward_sampler
        steps = len(sampler.timesteps) - 1  # the last step is deterministic (ᾱ_prev = 1): no density
        shape = x_T.shape[1:]
        noises = [
            torch.stack([torch.randn(shape, generator=g) for g in gens for _ in range(2)]).to(x_T.device)
            for _ in range(steps)
        ]
        trajectory, x = [], x_T
        with torch.no_grad():
            for i in range(steps):
                x_prev, _ = sampler.step(predict, x, i, noises[i])
                trajectory.append((i, x, x_prev))
                x = x_prev
            x, _ = sampler.step(predict, x, steps, torch.zeros_like(x))  # σ = 0 at the last step
            emb = self.embedder(x)
        reward = pair_diversity(emb[0::2], emb[1::2])
        mean, std = pooled_statistics(reward, self.accelerator)
        advantage = ((reward - mean) / (std + 1e-6)).repeat_interleave(2)
        step_draw = sample_generator(cfg.seed, self.step, STEP_DRAW)
        chosen = torch.randperm(steps, generator=step_draw)[: cfg.backprop_steps].tolist()
        log_p = 0
        for i in chosen:
            _, x_i, x_prev = trajectory[i]
            step = sampler.step(predict, x_i, i, noises[i])[1]
            log_p = log_p + gaussian_log_prob(x_prev, step.mean, step.std) / x_prev[0].numel()
        return -weight * (advantage * log_p).sum(), mean

    # ---- the step -----------------------------------------------------------------------------
    def train_step(self, indices: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        samples = [self.world.sample(sample_seed(cfg.data_seed, i)) for i in indices]
        gens = [sample_generator(cfg.seed, self.step, i) for i in indices]
        embeds, mask = self.encode([s.caption for s in samples])
        scales = self.student_scales(gens)
        x_t, t = self.distillation_states(samples, gens, embeds, mask, scales)
        with torch.no_grad():
            target = self.guided_target(x_t, t, embeds, mask, scales)
        pred = self.predictor(self.model, embeds, mask, scales)(x_t, t)
        distill = F.mse_loss(pred.float(), target.float())
        loss, metrics = distill, {"distill": distill.item()}
        if self.embedder is not None:
            mine = self.leading(indices, cfg.diversity_prompts)
            div, reward = self.diversity_loss(
                embeds[mine],
                None if mask is None else mask[mine],
                [gens[k] for k in mine],
                None if scales is None else scales[mine],
            )
            loss = loss + cfg.diversity_weight * div
            metrics["diversity_reward"] = reward
        return loss, metrics

    # ---- sampling and export ------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Sample held-out prompts with the student (one UNet call per step): a grid and eval-judge scores.

        A plain student samples unguided; a guidance-conditioned one at the teacher's ``guidance_scale``.
        """
        cfg = self.config
        return self.student_grid(cfg.sample_prompts, cfg.guidance_scale if cfg.guidance_conditioned else 1.0)

    def model_card(self, metrics: dict[str, float]) -> str:
        cfg = self.config
        reward = (
            f"diversity reward β={cfg.diversity_weight} ({cfg.diversity_mode}, reward judge)"
            if cfg.diversity_weight
            else "no diversity reward (β = 0: the quality student)"
        )
        if cfg.guidance_conditioned:
            what = (
                f"Reads the guidance scale w as an input and samples, at one UNet call per step, what `{cfg.base}` "
                f"samples with classifier-free guidance at that w, for w in [{cfg.guidance_min:g}, "
                f"{cfg.guidance_scale:g}] (`guidance_scale` sets it)"
            )
        else:
            what = (
                "Samples without classifier-free guidance (one UNet call per step) what "
                f"`{cfg.base}` samples with guidance w={cfg.guidance_scale:g}"
            )
        refinements = cfg.guidance.refinements()
        if refinements:
            what += f" ({', '.join(refinements)})"
        hardware = training_hardware(self.accelerator.device, self.accelerator.num_processes)
        return f"""# CFG-distilled student of `{cfg.base}`

{what}; {reward}. {cfg.on_policy:.0%} of distillation states on-policy from
{cfg.rollout_steps}-step student rollouts.

- Made by: `{self.command or "mixstudio train cfg-distill-" + str(cfg.world)}`
- Steps: {metrics["steps"]} at batch {cfg.batch_size} (lr {cfg.lr}, seed {cfg.seed})
- Wall time: {metrics["train_minutes"]:.1f} min on {hardware}
- Eval-judge adherence of the student's final sample grid ({cfg.sample_prompts} held-out prompts x 2, 25 DDIM
  steps): {metrics.get("sample_adherence", float("nan")):.3f}

See `docs/CFG_DISTILL.md` for the adherence-diversity comparison against the guided teacher.
"""
