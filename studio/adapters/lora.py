"""LoRA: a low-rank additive update ``ΔW = s · (alpha / r) · B A`` (Hu et al. 2021, arXiv 2106.09685, Eq. 3)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from studio.adapters.base import AdditiveAdapter, LayerShape, check_field, check_positive_int


@dataclass(kw_only=True)
class LoRAConfig:
    """LoRA (Hu et al. 2021, arXiv 2106.09685): ``ΔW = (alpha / rank) · B A``, ``A`` random, ``B = 0``."""

    method: ClassVar[str] = "lora"
    rank: int = 4
    """Inner dimension ``r``: ``A`` is ``(r, d_in)``, ``B`` is ``(d_out, r)``."""
    alpha: float | None = None
    """Numerator of the scaling ``alpha / rank``; None means ``alpha = rank`` (scaling 1)."""

    def __post_init__(self) -> None:
        check_positive_int("LoRAConfig.rank", self.rank, "pass e.g. rank=4")
        check_field(
            self.alpha is None or isinstance(self.alpha, int | float),
            "LoRAConfig.alpha",
            self.alpha,
            "need a number or None",
            "pass e.g. alpha=8.0",
        )


class LoRAAdapter(AdditiveAdapter):
    """``A (r, d_in)`` Kaiming-uniform (as ``nn.Linear`` and PEFT), ``B (d_out, r)`` zero, so ``ΔW = 0`` at init.

    For a conv, ``A`` is the flattened ``(r, C_in, kh, kw)`` kernel and ``B`` the ``(d_out, r)`` 1×1 kernel: PEFT's
    ``lora_A.weight`` / ``lora_B.weight`` reshaped. Parameters: ``r · (d_in + d_out)``.
    """

    def __init__(self, config: LoRAConfig, shape: LayerShape, *, generator: torch.Generator | None = None) -> None:
        super().__init__(config, shape)
        rank = config.rank
        self.scaling = (rank if config.alpha is None else config.alpha) / rank
        self.A = nn.Parameter(torch.empty(rank, shape.d_in))
        self.B = nn.Parameter(torch.zeros(shape.d_out, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5), generator=generator)

    def delta_weight(self, scale: float) -> torch.Tensor:
        return (scale * self.scaling) * (self.B @ self.A)

    def delta_forward(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        # Two thin matmuls, O(r (d_in + d_out)) per row, instead of building the (d_out, d_in) update; the strength
        # scales the small factor, not every output row.
        a = (scale * self.scaling) * self.A
        return (x @ a.transpose(0, 1)) @ self.B.transpose(0, 1)
