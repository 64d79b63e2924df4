"""A differentiable DDIM sampler for trainers that learn through sampling (CFG distillation, reward finetuning).

Pipelines sample with diffusers schedulers; trainers need the same steps as pure tensor functions:
to roll out the student's own trajectories (on-policy distillation states), to backpropagate a
reward through the last steps of a trajectory (truncated backprop, AlignProp/DRaFT style), and to
score a stochastic step's log-probability (REINFORCE; DDPO's :func:`ddim_step_with_logprob`).
``ddim_step`` with ``eta=0`` reproduces ``diffusers.DDIMScheduler.step`` (tested), so what a trainer
optimises is what the pipeline samples.

DDIM (Song et al. 2021, eq. 12), with ``ᾱ`` the cumulative alpha at the current and previous timestep::

    x0 = (x_t − √(1−ᾱ_t)·ε) / √ᾱ_t
    σ  = η · √((1−ᾱ_prev)/(1−ᾱ_t)) · √(1 − ᾱ_t/ᾱ_prev)
    x_prev = √ᾱ_prev · x0 + √(1−ᾱ_prev−σ²) · ε + σ·z
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

#: ``predict(x_t, t) -> model output`` (ε or v, per ``prediction_type``); ``t`` is a ``(B,)`` long tensor.
Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ddim_timesteps(num_train_timesteps: int, steps: int) -> torch.Tensor:
    """Descending timesteps with diffusers' default ``leading`` spacing, e.g. ``(1000, 4) -> [750, 500, 250, 0]``."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be in [1, {num_train_timesteps}], got {steps}")
    ratio = num_train_timesteps // steps
    return (torch.arange(steps) * ratio).flip(0)


def split_prediction(
    output: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x0, ε)`` from a model output: ε-prediction, or v-prediction (``v = √ᾱ·ε − √(1−ᾱ)·x0``).

    Args:
        output, x_t: ``(B, C, H, W)``.
        alpha_bar: ``(B, 1, 1, 1)`` cumulative alphas at the sample's timestep.
        prediction_type: ``epsilon`` or ``v_prediction``.
    """
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if prediction_type == "epsilon":
        return (x_t - s * output) / a, output
    if prediction_type == "v_prediction":
        return a * x_t - s * output, s * x_t + a * output
    raise ValueError(f"prediction_type must be epsilon or v_prediction, got {prediction_type!r}")


@dataclass
class StepResult:
    """One DDIM step: the mean of ``x_prev``, its standard deviation (0 for η = 0) and the predicted ``x0``."""

    mean: torch.Tensor
    std: torch.Tensor
    x0: torch.Tensor


def ddim_step(
    output: torch.Tensor,
    x_t: torch.Tensor,
    alpha_bar_t: torch.Tensor,
    alpha_bar_prev: torch.Tensor,
    prediction_type: str,
    eta: float = 0.0,
    clip_x0: float | None = None,
) -> StepResult:
    """The Gaussian ``p(x_prev | x_t)`` of a DDIM step; differentiable in ``output`` and ``x_t``.

    Args:
        output: model output ``(B, C, H, W)``.
        x_t: current sample.
        alpha_bar_t, alpha_bar_prev: ``(B, 1, 1, 1)`` cumulative alphas (``alpha_bar_prev = 1`` past the end).
        prediction_type: ``epsilon`` or ``v_prediction``.
        eta: 0 for deterministic DDIM, 1 for DDPM-like ancestral noise.
        clip_x0: clamp the predicted ``x0`` to ``[-clip_x0, clip_x0]`` (pixel models' ``clip_sample``); ε is kept
            unclamped, as in diffusers' default ``use_clipped_model_output=False``.
    """
    x0, eps = split_prediction(output, x_t, alpha_bar_t, prediction_type)
    if clip_x0 is not None:
        x0 = x0.clamp(-clip_x0, clip_x0)
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)
    std = eta * variance.clamp_min(0).sqrt()
    mean = alpha_bar_prev.sqrt() * x0 + (1 - alpha_bar_prev - std**2).clamp_min(0).sqrt() * eps
    return StepResult(mean=mean, std=std.expand_as(mean), x0=x0)


@dataclass
class StepLogProb:
    """One stochastic DDIM step with its log-probability (see :func:`ddim_step_with_logprob`)."""

    prev_sample: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def ddim_step_with_logprob(
    output: torch.Tensor,
    x_t: torch.Tensor,
    alpha_bar_t: torch.Tensor,
    alpha_bar_prev: torch.Tensor,
    prediction_type: str,
    eta: float,
    clip_x0: float | None = None,
    *,
    noise: torch.Tensor | None = None,
    prev_sample: torch.Tensor | None = None,
) -> StepLogProb:
    """A stochastic DDIM step as a Gaussian policy ``π(x_prev | x_t)``: a draw (or a given one) and its log-density.

    DDPO (Black, Janner et al. 2023, "Training Diffusion Models with Reinforcement Learning") treats each
    denoising step as an action of a Gaussian policy. With η > 0 the DDIM step (Song et al. 2021, eq. 12 and 16) is
    the Gaussian ``N(μ_θ(x_t, t), σ_t² I)``::

        x0 = (x_t − √(1−ᾱ_t)·ε_θ) / √ᾱ_t                                  (clamped to ±clip_x0 if given)
        σ_t = η · √((1−ᾱ_prev)/(1−ᾱ_t)) · √(1 − ᾱ_t/ᾱ_prev)
        μ_θ = √ᾱ_prev · x0 + √(1−ᾱ_prev−σ_t²) · ε_θ
        log π(x_prev | x_t) = 1/D · Σ_d [ −(x_prev,d − μ_θ,d)² / (2σ_t²) − log σ_t − ½ log 2π ]

    The log-density is averaged over the ``D`` dimensions of a sample, not summed, as in the authors' code
    (kvablack/ddpo-pytorch, ``ddim_with_logprob.py``): the PPO clip range of 1e-4 in the paper is a range of
    ``exp`` of this per-dimension mean. ``x_prev`` enters detached, so the gradient flows through ``μ_θ`` alone.

    Example: with ``ᾱ_t = 0.5``, ``ᾱ_prev = 0.8`` and η = 1, ``σ_t² = (0.2/0.5)·(1 − 0.625) = 0.15``; a draw at
    the mean has log-probability ``−log √0.15 − ½ log 2π ≈ 0.0296`` per dimension.

    Args:
        output: model output ``(B, C, H, W)`` (ε or v, per ``prediction_type``).
        x_t: the current sample ``(B, C, H, W)``.
        alpha_bar_t, alpha_bar_prev: ``(B, 1, 1, 1)`` cumulative alphas; ``alpha_bar_prev < 1`` (σ_t > 0).
        prediction_type: ``epsilon`` or ``v_prediction``.
        eta: the noise scale η > 0 (1: DDPM's posterior variance).
        clip_x0: clamp of the predicted ``x0`` (None: none).
        noise: ``(B, C, H, W)`` standard normal draw of ``x_prev = μ + σ·noise`` (when ``prev_sample`` is None).
        prev_sample: an ``x_prev`` to score instead (a stored action, re-scored under the current policy).

    Returns:
        :class:`StepLogProb`: ``prev_sample`` ``(B, C, H, W)``, ``log_prob`` ``(B,)``, the ``mean`` and ``std``.

    Raises:
        ValueError: for η ≤ 0, a step with σ_t = 0, or neither/both of ``noise`` and ``prev_sample``.
    """
    if not eta > 0:
        raise ValueError(f"eta must be > 0 for a step to have a log-probability, got {eta}")
    if (noise is None) == (prev_sample is None):
        raise ValueError("pass exactly one of noise (to draw x_prev) and prev_sample (to score a given one)")
    step = ddim_step(output, x_t, alpha_bar_t, alpha_bar_prev, prediction_type, eta, clip_x0)
    if not bool((step.std > 0).all()):
        raise ValueError("this step has σ_t = 0 (ᾱ_prev = 1: the last step to x0), so it has no log-probability")
    if prev_sample is None:
        prev_sample = step.mean + step.std * noise
    var = step.std**2
    log_p = -((prev_sample.detach() - step.mean) ** 2) / (2 * var) - step.std.log() - 0.5 * math.log(2 * math.pi)
    return StepLogProb(prev_sample=prev_sample, log_prob=log_p.flatten(1).mean(1), mean=step.mean, std=step.std)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-sample log-density of ``x`` under ``N(mean, std²)`` summed over all but the batch dimension."""
    var = std**2
    log_p = -((x - mean) ** 2) / (2 * var) - var.log() / 2 - 0.5 * torch.log(torch.tensor(2 * torch.pi))
    return log_p.flatten(1).sum(1)


class DDIMSampler:
    """DDIM over a training schedule's ``alphas_cumprod``.

    Args:
        alphas_cumprod: ``(T,)`` cumulative alphas of the training schedule.
        prediction_type: the model's output type.
        steps: sampling steps.
        eta: 0 deterministic, 1 ancestral.
        clip_x0: clamp of predicted ``x0`` (None: no clamp).
    """

    def __init__(
        self,
        alphas_cumprod: torch.Tensor,
        prediction_type: str,
        steps: int,
        eta: float = 0.0,
        clip_x0: float | None = None,
    ):
        self.alphas_cumprod = alphas_cumprod.float()
        self.prediction_type = prediction_type
        self.timesteps = ddim_timesteps(len(alphas_cumprod), steps)
        self.eta = eta
        self.clip_x0 = clip_x0

    def alphas(self, index: int, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ᾱ_t, ᾱ_prev)`` of step ``index`` broadcast to ``(batch, 1, 1, 1)``."""
        t = int(self.timesteps[index])
        prev = int(self.timesteps[index + 1]) if index + 1 < len(self.timesteps) else -1
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev] if prev >= 0 else torch.tensor(1.0)
        shape = (batch, 1, 1, 1)
        return a_t.to(device).expand(shape), a_prev.to(device).expand(shape)

    def step(
        self, predict: Predictor, x: torch.Tensor, index: int, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, StepResult]:
        """One step from ``x`` at step ``index``; returns ``(x_prev, step)``. ``noise`` is needed when ``eta > 0``."""
        t = self.timesteps[index].to(x.device).expand(x.shape[0])
        a_t, a_prev = self.alphas(index, x.shape[0], x.device)
        result = ddim_step(predict(x, t), x, a_t, a_prev, self.prediction_type, self.eta, self.clip_x0)
        if self.eta > 0:
            if noise is None:
                raise ValueError("eta > 0 needs noise for the ancestral step")
            return result.mean + result.std * noise, result
        return result.mean, result

    def sample(
        self,
        predict: Predictor,
        x_T: torch.Tensor,
        grad_steps: int = 0,
        checkpointed: bool = True,
        noises: list[torch.Tensor] | None = None,
        trajectory: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Run every step from ``x_T``; return the final sample (the last step's ``x0`` prediction).

        Args:
            predict: the model.
            x_T: initial noise ``(B, C, H, W)``.
            grad_steps: keep the autograd graph only through the last ``grad_steps`` steps (truncated backprop);
                earlier steps run under ``no_grad``.
            checkpointed: recompute each graph step's activations in backward (memory ∝ one step, not K).
            noises: per-step noise for ``eta > 0``.
            trajectory: if given, each step's input state ``x`` at ``self.timesteps[i]`` is appended to it,
                detached.
        """
        x, n = x_T, len(self.timesteps)
        for i in range(n):
            noise = noises[i] if noises is not None else None
            if trajectory is not None:
                trajectory.append(x.detach())
            if i < n - grad_steps:
                with torch.no_grad():
                    x, _ = self.step(predict, x, i, noise)
            elif checkpointed:
                x = checkpoint(lambda x_, i_=i, z_=noise: self.step(predict, x_, i_, z_)[0], x, use_reentrant=False)
            else:
                x, _ = self.step(predict, x, i, noise)
        return x
