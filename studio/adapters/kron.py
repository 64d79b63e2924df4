"""Kronecker adapters: DiffuseKronA (Marjit et al. 2024, arXiv 2402.17412) and LoKr (LyCORIS, arXiv 2309.14859).

Both add ``ΔW = s · c · (A ⊗ B)`` to the flattened ``(d_out, d_in)`` weight, with ``A (a1, a2)``, ``B (b1, b2)``,
``a1·b1 = d_out`` and ``a2·b2 = d_in`` (``d_in = C_in·kh·kw`` for convs). On Linear and 1×1 conv layers the forward
pass never builds ``ΔW``: :func:`~studio.adapters.maths.kron_matvec` computes ``A X Bᵀ``. The operator applied in
the forward pass is exactly ``torch.kron(A, B)``, which is what merging adds (the official DiffuseKronA code applies
``B ⊗ Aᵀ`` after an input shuffle; its factors are not interchangeable with these).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from studio.adapters.base import AdditiveAdapter, LayerShape, check_divides, check_field, check_positive_int
from studio.adapters.maths import factorize, kron_matvec


@dataclass(kw_only=True)
class DiffuseKronAConfig:
    """DiffuseKronA (Marjit et al. 2024, arXiv 2402.17412): ``ΔW = A ⊗ B``, ``A (a1, a2)`` random, ``B = 0``."""

    method: ClassVar[str] = "diffusekrona"
    a1: int
    """Rows of ``A``; must divide ``d_out`` (``b1 = d_out / a1``)."""
    a2: int
    """Columns of ``A``; must divide ``d_in`` (``b2 = d_in / a2``; for convs ``d_in = C_in · kh · kw``)."""

    def __post_init__(self) -> None:
        check_positive_int("DiffuseKronAConfig.a1", self.a1, "pass e.g. a1=4")
        check_positive_int("DiffuseKronAConfig.a2", self.a2, "pass e.g. a2=8")


@dataclass(kw_only=True)
class LoKrConfig:
    """LoKr (LyCORIS, arXiv 2309.14859; as in PEFT): ``ΔW = (alpha / rank) · (w1 ⊗ w2)``."""

    method: ClassVar[str] = "lokr"
    rank: int = 8
    """Rank of the low-rank factors; ``w2`` is low-rank when ``rank < max(b1, b2') / 2`` (PEFT's rule)."""
    alpha: float | None = None
    """Numerator of ``alpha / rank``; None means ``alpha = rank``."""
    factor: int = -1
    """Preferred size of the small factor (PEFT ``decompose_factor``); -1 balances the two factors."""
    decompose_both: bool = False
    """Also make ``w1`` low-rank when ``rank < max(a1, a2) / 2``."""
    a1: int | None = None
    """Explicit rows of ``w1`` (with ``a2``); None picks sizes like PEFT."""
    a2: int | None = None
    """Explicit columns of ``w1`` (with ``a1``)."""

    def __post_init__(self) -> None:
        check_positive_int("LoKrConfig.rank", self.rank, "pass e.g. rank=8")
        check_field(
            self.factor == -1 or (isinstance(self.factor, int) and self.factor >= 1),
            "LoKrConfig.factor",
            self.factor,
            "need -1 or an int >= 1",
            "pass factor=-1 to balance the factors",
        )
        check_field(
            (self.a1 is None) == (self.a2 is None),
            "LoKrConfig.a1",
            self.a1,
            f"a1 and a2 (={self.a2}) must be given together",
            "pass both or neither",
        )
        for name in ("a1", "a2"):
            if getattr(self, name) is not None:
                check_positive_int(f"LoKrConfig.{name}", getattr(self, name), "pass e.g. 4")


def _kaiming(shape: tuple[int, ...], generator: torch.Generator | None) -> nn.Parameter:
    tensor = torch.empty(shape)
    nn.init.kaiming_uniform_(tensor, a=math.sqrt(5), generator=generator)
    return nn.Parameter(tensor)


class DiffuseKronAAdapter(AdditiveAdapter):
    """``ΔW = s · (A ⊗ B)``; ``A`` Kaiming-uniform, ``B = 0`` at init. Parameters: ``a1·a2 + b1·b2``."""

    def __init__(
        self, config: DiffuseKronAConfig, shape: LayerShape, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(config, shape)
        check_divides("DiffuseKronAConfig.a1", config.a1, shape.d_out, "output features")
        check_divides("DiffuseKronAConfig.a2", config.a2, shape.d_in, "input features (C_in·kh·kw for convs)")
        self.A = _kaiming((config.a1, config.a2), generator)
        self.B = nn.Parameter(torch.zeros(shape.d_out // config.a1, shape.d_in // config.a2))

    def delta_weight(self, scale: float) -> torch.Tensor:
        return scale * torch.kron(self.A, self.B)

    def delta_forward(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        return kron_matvec(x, scale * self.A, self.B)  # the strength scales the small factor, not every output


class LoKrAdapter(AdditiveAdapter):
    """``ΔW = s · (alpha / rank) · (w1 ⊗ w2)``, shapes and initialisation as PEFT's ``LoKrLayer``.

    Without explicit ``a1, a2``: ``(a1, b1) = factorize(d_out, factor)``, ``(a2, n) = factorize(C_in, factor)`` and
    ``b2 = n · kh · kw``, so a conv's kernel window lives in ``w2``. ``w2`` is ``w2_a @ w2_b`` (rank ``r``) when
    ``r < max(b1, n) / 2``, and ``w1 = w1_a @ w1_b`` when ``decompose_both`` and ``r < max(a1, a2) / 2``. Init:
    ``w1`` (or ``w1_a``) zero, the rest Kaiming-uniform. Parameter names match PEFT's ``lokr_*`` without prefix.
    """

    def __init__(self, config: LoKrConfig, shape: LayerShape, *, generator: torch.Generator | None = None) -> None:
        super().__init__(config, shape)
        rank = config.rank
        self.scaling = (rank if config.alpha is None else config.alpha) / rank
        if config.a1 is not None:
            check_divides("LoKrConfig.a1", config.a1, shape.d_out, "output features")
            check_divides("LoKrConfig.a2", config.a2, shape.d_in, "input features (C_in·kh·kw for convs)")
            a1, a2 = config.a1, config.a2
            b1, b2 = shape.d_out // a1, shape.d_in // a2
            n = b2
        else:
            a1, b1 = factorize(shape.d_out, config.factor)
            a2, n = factorize(shape.in_channels, config.factor)
            b2 = n * shape.kernel_numel
        self.sizes = (a1, a2, b1, b2)
        if config.decompose_both and rank < max(a1, a2) / 2:
            self.w1_a = nn.Parameter(torch.zeros(a1, rank))
            self.w1_b = _kaiming((rank, a2), generator)
        else:
            self.w1 = nn.Parameter(torch.zeros(a1, a2))
        if rank < max(b1, n) / 2:
            self.w2_a = _kaiming((b1, rank), generator)
            self.w2_b = _kaiming((rank, b2), generator)
        else:
            self.w2 = _kaiming((b1, b2), generator)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The Kronecker factors ``(w1 (a1, a2), w2 (b1, b2))``, multiplying out any low-rank pair."""
        w1 = self.w1 if hasattr(self, "w1") else self.w1_a @ self.w1_b
        w2 = self.w2 if hasattr(self, "w2") else self.w2_a @ self.w2_b
        return w1, w2

    def delta_weight(self, scale: float) -> torch.Tensor:
        w1, w2 = self.factors()
        return (scale * self.scaling) * torch.kron(w1, w2)

    def delta_forward(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        w1, w2 = self.factors()
        return kron_matvec(x, (scale * self.scaling) * w1, w2)
