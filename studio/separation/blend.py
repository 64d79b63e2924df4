"""A linear blend of several separators, one weight per (stem, member): itself a separator.

After Danna-Sep (Yu & Cheuk, "Danna-Sep: Unite to Separate Them All", MDX 2021 workshop), which reached
6.77 dB average SDR by weighting the waveform outputs of three different separators per stem. The weights
here are fitted in closed form: for stem ``s``, ``w_s = argmin Σ ‖y_s − Σ_m w_{s,m} ŷ_{s,m}‖²`` over
validation mixtures, the least-squares solution of the ``M × M`` normal equations ``G_s w_s = b_s`` with
``G_s[m, n] = Σ ⟨ŷ_{s,m}, ŷ_{s,n}⟩`` and ``b_s[m] = Σ ⟨ŷ_{s,m}, y_s⟩``, accumulated batch by batch so the
validation set never has to sit in memory at once. Demucs' ``BagOfModels`` (``demucs/apply.py``) is the
fixed-weight version of the same idea.

The blend saves like any separator: ``config.json`` holds the members' configs, the safetensors file their
weights and the ``(S, M)`` blend weights (``weights``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffusers.configuration_utils import register_to_config
from torch import nn

from studio.separation.base import Separator, check_contract
from studio.separation.families import member_class


class BlendSeparator(Separator):
    """``ŷ_s = Σ_m weights[s, m] · member_m(mix)_s``.

    Args:
        member_configs: the members' configs (``separator.config`` plus ``_class_name``), in blend order.
        sources, sample_rate, audio_channels, segment_samples: the separator contract (the members' own).

    The ``(S, M)`` blend weights are a buffer (saved with the members' weights), an equal ``1 / M`` average
    until set. Build a blend from trained separators with :meth:`from_members` or :func:`fit_blend`.
    """

    @register_to_config
    def __init__(
        self,
        member_configs: Sequence[Mapping[str, Any]],
        sources: Sequence[str],
        sample_rate: int,
        audio_channels: int,
        segment_samples: int,
    ):
        super().__init__()
        check_contract(sources, sample_rate, audio_channels, segment_samples)
        if not member_configs:
            raise ValueError("a blend needs at least one member separator")
        self.members = nn.ModuleList(member_class(cfg.get("_class_name")).from_config(cfg) for cfg in member_configs)
        for member in self.members:
            _check_same_contract(member, list(sources), sample_rate, audio_channels)
        self.register_buffer("weights", torch.full((len(sources), len(member_configs)), 1.0 / len(member_configs)))

    @classmethod
    def from_members(cls, separators: Sequence[Separator], weights: torch.Tensor | None = None) -> BlendSeparator:
        """A blend of trained ``separators`` (their weights copied in), with ``(S, M)`` ``weights`` or equal ones.

        Raises:
            ValueError: for no separators, or separators with different sources, rates or channel counts.
        """
        if not separators:
            raise ValueError("a blend needs at least one member separator")
        first = separators[0]
        for other in separators:
            _check_same_contract(other, first.sources, first.sample_rate, first.audio_channels)
        blend = cls(
            member_configs=[_member_config(s) for s in separators],
            sources=first.sources,
            sample_rate=first.sample_rate,
            audio_channels=first.audio_channels,
            segment_samples=min(s.segment_samples for s in separators),
        )
        for mine, theirs in zip(blend.members, separators):
            mine.load_state_dict(theirs.state_dict())
        if weights is not None:
            blend.set_weights(weights)
        return blend.eval()

    def set_weights(self, weights: torch.Tensor) -> None:
        """Replace the ``(S, M)`` blend weights."""
        if weights.shape != self.weights.shape:
            raise ValueError(
                f"blend weights must be (sources, members) = {tuple(self.weights.shape)}, got {tuple(weights.shape)}"
            )
        self.weights.copy_(weights)

    def member_estimates(self, mix: torch.Tensor) -> torch.Tensor:
        """Every member's estimates, ``(B, S, M, C, T)``."""
        self.check_mix(mix)
        return torch.stack([member(mix) for member in self.members], dim=2)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """The blended estimates ``(B, S, C, T)``."""
        return torch.einsum("bsmct,sm->bsct", self.member_estimates(mix), self.weights.to(mix.dtype))


def blend_weights(estimates: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Least-squares per-stem blend weights ``(S, M)`` from estimates ``(N, S, M, C, T)``, references ``(N, S, C, T)``.

    Rank-deficient systems (two identical members) get the minimum-norm solution.
    """
    gram, cross = blend_statistics(estimates, references)
    return solve_blend(gram, cross)


def blend_statistics(estimates: torch.Tensor, references: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The normal-equation terms of one batch in float64: Gram ``(S, M, M)`` and cross products ``(S, M)``."""
    est, ref = estimates.double(), references.double()
    return torch.einsum("nsmct,nsuct->smu", est, est), torch.einsum("nsmct,nsct->sm", est, ref)


def solve_blend(gram: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
    """Solve ``gram[s] @ w[s] = cross[s]`` per stem (minimum-norm least squares); returns float32 ``(S, M)``."""
    solution = torch.linalg.lstsq(gram, cross.unsqueeze(-1), driver="gelsd").solution
    return solution.squeeze(-1).float()


@torch.no_grad()
def fit_blend(
    separators: Sequence[Separator], mixtures: torch.Tensor, references: torch.Tensor, *, batch_size: int = 8
) -> BlendSeparator:
    """Fit per-stem blend weights of ``separators`` on validation data and return the blend.

    Args:
        separators: trained separators with the same sources, rate and channels.
        mixtures: validation mixtures ``(N, C, T)`` at the separators' rate.
        references: their true stems ``(N, S, C, T)``, in the separators' source order.
        batch_size: mixtures per forward pass.

    Returns:
        a :class:`BlendSeparator` in eval mode.

    Raises:
        ValueError: for mismatched shapes or separators.
    """
    blend = BlendSeparator.from_members(separators)
    if mixtures.ndim != 3 or references.shape != (mixtures.shape[0], len(blend.sources), *mixtures.shape[1:]):
        raise ValueError(
            f"need mixtures (N, C, T) and references (N, {len(blend.sources)}, C, T); got {tuple(mixtures.shape)} "
            f"and {tuple(references.shape)}"
        )
    gram = cross = 0
    for mix, ref in zip(mixtures.split(batch_size), references.split(batch_size)):
        g, c = blend_statistics(blend.member_estimates(mix), ref)
        gram, cross = gram + g, cross + c
    blend.set_weights(solve_blend(gram, cross))
    return blend


def _check_same_contract(separator: Separator, sources: list[str], sample_rate: int, audio_channels: int) -> None:
    if (separator.sources, separator.sample_rate, separator.audio_channels) != (sources, sample_rate, audio_channels):
        raise ValueError(
            f"blend members must share sources, rate and channels: {type(separator).__name__} has "
            f"{separator.sources} at {separator.sample_rate} Hz x {separator.audio_channels}, expected {sources} at "
            f"{sample_rate} Hz x {audio_channels}"
        )


def _member_config(separator: Separator) -> dict[str, Any]:
    """A member's architecture for the blend's config: its class and its config, without diffusers' private entries
    (``_name_or_path`` records where it was loaded from, a path of this machine)."""
    config = {k: v for k, v in separator.config.items() if not k.startswith("_")}
    return {"_class_name": type(separator).__name__, **config}
