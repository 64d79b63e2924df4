"""Samplers of a multi-source diffusion model: generate all stems, accompany given stems, separate a mixture.

Mariani, Tallini, Postolache, Mancusi, Cosmo & Rodolà, "Multi-Source Diffusion Models for Simultaneous Music
Generation and Separation" (ICLR 2024, arXiv:2302.02257), over Karras et al., "Elucidating the Design Space of
Diffusion-Based Generative Models" (EDM, NeurIPS 2022). A state ``x`` is ``(B, S, …)``: ``S`` stacked sources in a
domain where the mixture is their sum. ``denoise(x, σ) → D(x; σ)`` is the model's estimate of the clean sources,
and the probability-flow ODE (EDM eq. 4 with ``σ(t) = t``) is ``dx/dσ = (x − D(x; σ)) / σ = −σ ∇ₓ log p(x; σ)``.

**Schedule** (EDM eq. 5): ``σ_i = (σ_max^{1/ρ} + i/(N−1) · (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ`` for ``i < N``, and
``σ_N = 0``; ρ = 7.

**Step** (EDM Algorithm 2, Euler–Heun with churn), from ``σ_i`` to ``σ_{i+1}``::

    γ_i = min(S_churn / N, √2 − 1) if S_tmin ≤ σ_i ≤ S_tmax else 0
    σ̂ = σ_i (1 + γ_i);  x̂ = x + √(σ̂² − σ_i²) · S_noise · ε
    d = f(x̂, σ̂);  x' = x̂ + (σ_{i+1} − σ̂) · d
    if heun and σ_{i+1} > 0:  x' = x̂ + (σ_{i+1} − σ̂) · (d + f(x', σ_{i+1})) / 2

with ``f`` the (possibly conditioned) derivative below. ``resamples`` > 1 repeats each step, re-noising from
``σ_{i+1}`` back to ``σ_i`` in between (``x ← x' + √(σ_i² − σ_{i+1}²) · ε``), as the MSDM code does
(gladia-research-group/multi-source-diffusion-models, ``main/separation.py:separate_mixture``). Note that the MSDM
code takes plain Euler steps (no Heun correction) in separation and inpainting; ``heun=False`` reproduces that.

**Uses** (the MSDM paper, Sec. 3-4, and its code):

- *generate* (total generation): ``f(x, σ) = (x − D(x; σ)) / σ`` from ``x = σ_max · ε``;
- *accompany* (partial generation, source imputation: the code's notebook ``generate_track`` and audio-diffusion-
  pytorch's ``inpaint``, RePaint-style): before every (re)sample of step ``i`` the given sources are replaced by
  ``given + σ_i · ε`` (one draw per step) and the joint step runs on all sources; at the end the given sources are
  returned exactly;
- *separate* with the **Dirac** likelihood (paper eq. 10-11; ``differential_with_dirac``): source ``K`` (the
  constrained one) is always ``y − Σ_{n≠K} x_n``, and the free sources move with ``f_n = d_n − d_K``, the
  derivative of the prior restricted to the hyperplane ``Σ x = y`` (``s_n − s_K`` in scores). After every update
  the constraint is applied again, so ``Σ_n x_n = y`` at every step up to float rounding;
- *separate* with the **Gaussian** likelihood baseline (paper eq. 8-9; ``differential_with_gaussian``):
  ``f = (x − D)/σ − σ / (2γ²) · (y − Σ_n x_n)`` with ``γ = 0.75 σ``. The paper writes the likelihood score as
  ``(y − Σ x) / γ²``; its code (what the reported 14.5 dB SI-SDRi come from) has the ``1/2``, and so do we.

The paper's separation settings (Slakh2100, 22 kHz waveforms, ``exp/eval_msdm_*.yaml``): σ from 1 to 1e-4, ρ 7,
150 steps, 2 resamples, ``S_churn`` 20 (Dirac) or 40 (Gaussian).

**Step sizes.** Both likelihoods make the ODE stiffer than the prior's along the direction of the sum. With the
Dirac derivative, an error ``e`` of the free sources that the denoiser corrects (``D = truth``) shrinks per Euler
step by ``1 − r`` across the sources but by ``1 − S·r`` along their sum, ``r = (σ̂ − σ_{i+1}) / σ̂``, so a step is
stable only for ``r < 2 / S`` (Heun's correction, with its second evaluation at the smaller ``σ_{i+1}``, fared
worse in practice). The Gaussian term shrinks the residual ``y − Σ x`` by ``1 − S·r / (2·0.75²)`` per step.
Churn raises ``σ̂`` and so ``r``. Few steps of a Karras schedule from 1 to 1e-4 break these bounds at the small-σ
end: an oracle denoiser (``tests/separation/test_msdm.py``) separated a synth mixture of S = 3 to 30-33 dB with
Euler steps and churn 20 from 16 steps on, but to −35 and 0.4 dB with Euler–Heun at 16 and 24 steps (28 dB at
32); the Gaussian baseline with churn 20 and Euler steps gave −40, 5.5 and 30 dB at 16, 24 and 32 steps. Separate
with Euler steps (``heun=False``, the MSDM code's choice) and 16 steps or more (32 or more for the Gaussian).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from diffusers.utils.torch_utils import randn_tensor

#: ``denoise(x (B, S, …), σ (B,)) → D(x; σ)`` of the same shape as ``x``.
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: Called as ``callback(step, x)`` after each step with the current state.
StepCallback = Callable[[int, torch.Tensor], None]
Generator = torch.Generator | list[torch.Generator] | None
LIKELIHOODS = ("dirac", "gaussian")


@dataclass(frozen=True)
class SamplerSettings:
    """A Karras schedule and the Euler–Heun sampler's settings.

    Attributes:
        steps: N, the number of steps (each one or two denoiser calls per resample).
        sigma_min, sigma_max: the schedule's ends (σ_N = 0 follows σ_min).
        rho: the schedule's ρ (7 in EDM and MSDM).
        churn: ``S_churn``, the total stochasticity (0: the deterministic ODE).
        s_noise: ``S_noise``, the scale of the noise churn adds.
        s_tmin, s_tmax: churn only at ``S_tmin ≤ σ_i ≤ S_tmax``.
        resamples: times each step is taken (re-noised back in between).
        heun: take Heun's second-order correction (EDM); False takes Euler steps, as the MSDM code does.

    Raises:
        ValueError: for a setting out of range, naming it.
    """

    steps: int = 50
    sigma_min: float = 1e-4
    sigma_max: float = 1.0
    rho: float = 7.0
    churn: float = 20.0
    s_noise: float = 1.0
    s_tmin: float = 0.0
    s_tmax: float = math.inf
    resamples: int = 1
    heun: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or not 1 <= self.steps <= 10_000:
            raise ValueError(f"steps must be an integer in [1, 10000], got {self.steps!r}")
        if not isinstance(self.resamples, int) or not 1 <= self.resamples <= 100:
            raise ValueError(f"resamples must be an integer in [1, 100], got {self.resamples!r}")
        if not 0 < self.sigma_min < self.sigma_max < math.inf:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min} and {self.sigma_max}")
        if not self.rho > 0 or not 0 <= self.churn < math.inf or not self.s_noise >= 0:
            raise ValueError(
                f"need rho > 0, 0 <= churn < inf and s_noise >= 0, got {self.rho}, {self.churn}, {self.s_noise}"
            )
        if not 0 <= self.s_tmin <= self.s_tmax:
            raise ValueError(f"need 0 <= s_tmin <= s_tmax, got {self.s_tmin} and {self.s_tmax}")


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> list[float]:
    """EDM eq. 5: ``steps`` noise levels from ``sigma_max`` down to ``sigma_min``, then 0 (``steps + 1`` values).

    Example: ``karras_sigmas(2, 0.01, 1.0)`` → ``[1.0, 0.01, 0.0]``; one step gives ``[sigma_max, 0]``.
    """
    if steps == 1:
        return [float(sigma_max), 0.0]
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return [(hi + i / (steps - 1) * (lo - hi)) ** rho for i in range(steps)] + [0.0]


def churn_gammas(sigmas: list[float], settings: SamplerSettings) -> list[float]:
    """``γ_i = min(S_churn / N, √2 − 1)`` where ``S_tmin ≤ σ_i ≤ S_tmax``, else 0, for the N steps."""
    steps = len(sigmas) - 1
    gamma = min(settings.churn / steps, math.sqrt(2) - 1)
    return [gamma if settings.s_tmin <= s <= settings.s_tmax else 0.0 for s in sigmas[:-1]]


def _randn(like: torch.Tensor, generator: Generator) -> torch.Tensor:
    return randn_tensor(like.shape, generator=generator, device=like.device, dtype=like.dtype)


def _sample(
    x: torch.Tensor,
    settings: SamplerSettings,
    derivative: Callable[[torch.Tensor, float], torch.Tensor],
    project: Callable[[torch.Tensor], torch.Tensor],
    generator: Generator,
    callback: StepCallback | None,
    paste: Callable[[torch.Tensor, int, float], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The shared loop: Karras schedule, churn, Euler–Heun, resampling; ``project`` after every change of ``x``,
    ``paste(x, i, σ_i)`` (accompaniment) before every (re)sample of step ``i``."""
    sigmas = karras_sigmas(settings.steps, settings.sigma_min, settings.sigma_max, settings.rho)
    gammas = churn_gammas(sigmas, settings)
    for i, (sigma, sigma_next, gamma) in enumerate(zip(sigmas[:-1], sigmas[1:], gammas)):
        for r in range(settings.resamples):
            if paste is not None:
                x = paste(x, i, sigma)
            sigma_hat = sigma * (1 + gamma)
            if gamma > 0:
                x = project(x + math.sqrt(sigma_hat**2 - sigma**2) * settings.s_noise * _randn(x, generator))
            d = derivative(x, sigma_hat)
            x_next = project(x + (sigma_next - sigma_hat) * d)
            if settings.heun and sigma_next > 0:
                x_next = project(x + (sigma_next - sigma_hat) * (d + derivative(x_next, sigma_next)) / 2)
            x = x_next
            if r < settings.resamples - 1:
                x = project(x + math.sqrt(sigma**2 - sigma_next**2) * _randn(x, generator))
        if callback is not None:
            callback(i, x)
    return x


def _ode(denoise: Denoiser) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """``f(x, σ) = (x − D(x; σ)) / σ``."""

    def derivative(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return (x - denoise(x, torch.full((x.shape[0],), sigma, device=x.device, dtype=x.dtype))) / sigma

    return derivative


@torch.no_grad()
def generate(
    denoise: Denoiser,
    shape: tuple[int, ...],
    settings: SamplerSettings,
    *,
    generator: Generator = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Total generation: every source from noise ``σ_max · ε`` of ``shape`` ``(B, S, …)``.

    Returns:
        the sources ``(B, S, …)``.
    """
    x = settings.sigma_max * randn_tensor(shape, generator=generator, device=torch.device(device), dtype=dtype)
    return _sample(x, settings, _ode(denoise), lambda v: v, generator, callback)


@torch.no_grad()
def accompany(
    denoise: Denoiser,
    given: torch.Tensor,
    known: torch.Tensor,
    settings: SamplerSettings,
    *,
    generator: Generator = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Partial generation: the sources where ``known`` is False, consistent with the given ones.

    Args:
        given: ``(B, S, …)``; only the known sources' entries are read.
        known: ``(S,)`` bool, True for a given source.

    Returns:
        ``(B, S, …)``: the given sources exactly, and the generated ones.

    Raises:
        ValueError: for a ``known`` mask of the wrong length, or one with no or every source known.
    """
    if known.shape != (given.shape[1],) or known.dtype != torch.bool:
        raise ValueError(
            f"known must be a bool mask of {given.shape[1]} sources, got {known.dtype} {tuple(known.shape)}"
        )
    if not 0 < int(known.sum()) < given.shape[1]:
        raise ValueError(f"give some but not all sources (known = {known.tolist()}); use generate or nothing")
    mask = known.to(given.device).view(1, -1, *([1] * (given.ndim - 2)))
    noisy: dict[int, torch.Tensor] = {}

    def paste(x: torch.Tensor, i: int, sigma: float) -> torch.Tensor:
        if i not in noisy:  # one draw per step, shared by its resamples
            noisy.clear()
            noisy[i] = given + sigma * _randn(given, generator)
        return torch.where(mask, noisy[i], x)

    x = settings.sigma_max * _randn(given, generator)
    x = _sample(x, settings, _ode(denoise), lambda v: v, generator, callback, paste)
    return torch.where(mask, given, x)


@torch.no_grad()
def separate(
    denoise: Denoiser,
    mixture: torch.Tensor,
    num_sources: int,
    settings: SamplerSettings,
    *,
    likelihood: Literal["dirac", "gaussian"] = "dirac",
    constrained: int = 0,
    gamma: float = 0.75,
    generator: Generator = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Posterior sampling of the sources of ``mixture`` ``(B, …)`` (see the module docstring for both likelihoods).

    Args:
        mixture: ``y`` in the model's domain, ``(B, …)``.
        num_sources: S.
        likelihood: ``dirac`` (the sum holds exactly) or ``gaussian`` (the baseline).
        constrained: Dirac: the source ``K`` set to ``y − Σ others`` (the MSDM code's ``source_id``, 0 there).
        gamma: Gaussian: ``γ / σ`` (0.75 in the paper).

    Returns:
        ``(B, S, …)``; with ``dirac`` the sources sum to ``mixture`` up to float rounding.

    Raises:
        ValueError: for an unknown likelihood, a constrained index out of range or a non-positive ``gamma``.
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    if not -num_sources <= constrained < num_sources:
        raise ValueError(f"constrained must index one of {num_sources} sources, got {constrained}")
    if not gamma > 0:
        raise ValueError(f"gamma (γ/σ of the Gaussian likelihood) must be positive, got {gamma}")
    y = mixture.unsqueeze(1)
    shape = (mixture.shape[0], num_sources, *mixture.shape[1:])
    x = settings.sigma_max * randn_tensor(shape, generator=generator, device=mixture.device, dtype=mixture.dtype)
    ode = _ode(denoise)
    k = constrained % num_sources

    if likelihood == "dirac":

        def project(v: torch.Tensor) -> torch.Tensor:
            others = v.sum(1, keepdim=True) - v[:, k : k + 1]
            return torch.cat([v[:, :k], y - others, v[:, k + 1 :]], dim=1)

        def derivative(v: torch.Tensor, sigma: float) -> torch.Tensor:
            d = ode(v, sigma)
            return d - d[:, k : k + 1]  # the free sources move with d_n − d_K; the constrained one follows

        return _sample(project(x), settings, derivative, project, generator, callback)

    def gaussian(v: torch.Tensor, sigma: float) -> torch.Tensor:
        return ode(v, sigma) - sigma / (2 * (gamma * sigma) ** 2) * (y - v.sum(1, keepdim=True))

    return _sample(x, settings, gaussian, lambda v: v, generator, callback)
