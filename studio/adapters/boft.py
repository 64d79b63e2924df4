"""BOFT: butterfly products of block rotations, plus a per-output scale (Liu et al. 2024, arXiv 2311.06243).

``W' = diag(m(s)) · W · R(s)ᵀ`` with ``R = B_{M-1} ⋯ B_0`` and ``B_l = P_l · blockdiag(Cayley(s · Q_lk)) · P_lᵀ``
(:func:`~studio.adapters.maths.butterfly_permutation`). Level 0 is plain block-diagonal, so ``factors=1`` is exactly
OFT with an output scale. Strength: every factor's generator is scaled by ``s`` (``R(s)`` stays a rotation); the
output scale, which is not a rotation, moves linearly: ``m(s) = 1 + s (m - 1)``. The product of the factors is
block-diagonal with blocks of ``b · 2^(M-1)`` features and is applied as those blocks (:meth:`composed_blocks`).

PEFT's CPU path silently uses one factor when its CUDA extension is missing, and its butterfly permutation pairs
half-blocks at a fixed distance at every level; here level ``l`` pairs them at distance ``2^l`` (an FFT butterfly,
which connects every feature after ``log2(d/b) + 1`` levels). Only ``factors=1`` is comparable with PEFT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from studio.adapters.base import (
    LayerShape,
    MultiplicativeAdapter,
    check_field,
    check_optional_blocks,
    check_positive_int,
    resolve_blocks,
)
from studio.adapters.maths import block_diagonal_matmul, butterfly_permutation
from studio.adapters.oft import cayley_blocks


@dataclass(kw_only=True)
class BOFTConfig:
    """BOFT (Liu et al. 2024, arXiv 2311.06243): ``R = B_m ⋯ B_1`` butterfly factors plus an output scale."""

    method: ClassVar[str] = "boft"
    block_size: int | None = None
    """Size ``b`` of each rotation block in every factor; exclusive with ``num_blocks``; neither means 32."""
    num_blocks: int | None = None
    """Blocks per factor (``b = d_in / num_blocks``); exclusive with ``block_size``."""
    factors: int = 1
    """Number ``m`` of butterfly factors; ``m = 1`` is OFT. Needs ``d_in`` divisible by ``b · 2^(m-1)``."""
    cayley: Literal["exact", "neumann"] = "exact"
    """As in :class:`OFTConfig`."""
    neumann_terms: int = 4
    """As in :class:`OFTConfig`."""

    def __post_init__(self) -> None:
        check_optional_blocks("BOFTConfig", self.block_size, self.num_blocks)
        check_positive_int("BOFTConfig.factors", self.factors, "pass e.g. factors=2")
        check_field(
            self.cayley in ("exact", "neumann"), "BOFTConfig.cayley", self.cayley, "allowed: exact, neumann", ""
        )
        check_positive_int("BOFTConfig.neumann_terms", self.neumann_terms, "pass e.g. neumann_terms=4")


class BOFTAdapter(MultiplicativeAdapter):
    """``M`` butterfly factors of ``r`` Cayley blocks of size ``b``; ``Q = 0`` and ``m = 1`` at init (identity).

    Parameters: ``M · r · b(b-1)/2 + d_out``.
    """

    has_output_map = True

    def __init__(self, config: BOFTConfig, shape: LayerShape, *, generator: torch.Generator | None = None) -> None:
        super().__init__(config, shape)
        n, b = resolve_blocks("BOFTConfig", config.block_size, config.num_blocks, shape.d_in)
        factors = config.factors
        span = b * 2 ** (factors - 1)
        if factors > 1 and (b % 2 or shape.d_in % span):
            raise ValueError(
                f"BOFTConfig.factors={factors} with block size {b} needs an even block size and d_in "
                f"({shape.d_in}) divisible by b·2^(factors-1) = {span}; lower factors or change block_size"
            )
        self.num_blocks, self.block_size, self.span = n, b, span
        # Composing the factors into span-wide blocks costs span multiply-adds per feature against M·b for the factors
        # one by one, which copy the row M times; up to twice the arithmetic (M <= 4) the saved copies pay for it.
        self.composes = span <= 2 * factors * b
        # On the activations a row then costs ~3·d_in·span multiply-adds (forward and both gradients), on the weight
        # the extra GEMM d_out·d_in, but small blocks run far below GEMM speed: measured (docs/ADAPTERS.md, b = 8,
        # M = 2-4), the activations win up to span = d_out / 16 and lose at 4096 tokens for 32 or 64 of 320 features.
        self.rows_cheaply = self.composes and 16 * span <= shape.d_out
        self.q = nn.Parameter(torch.zeros(factors, n, b * (b - 1) // 2))
        self.magnitude = nn.Parameter(torch.ones(shape.d_out))
        perms = torch.stack([butterfly_permutation(shape.d_in, b, level) for level in range(factors)])
        self.register_buffer("perms", perms, persistent=False)
        self.register_buffer("inverse_perms", torch.argsort(perms, dim=-1), persistent=False)

    def factor_blocks(self, scale: float) -> torch.Tensor:
        """``(M, r, b, b)`` rotation blocks of every factor at strength ``scale``."""
        config = self.config
        terms = config.neumann_terms if config.cayley == "neumann" else None
        factors, n, n_free = self.q.shape
        blocks = cayley_blocks(self.q.reshape(factors * n, n_free), self.block_size, scale, neumann_terms=terms)
        return blocks.reshape(factors, n, self.block_size, self.block_size)

    def composed_blocks(self, scale: float) -> torch.Tensor:
        """``R(s)`` as ``(d_in / span, span, span)`` dense blocks, ``span = b · 2^(M-1)``.

        Level ``l`` only mixes features within groups of ``b · 2^l``, so the whole product is block-diagonal with
        blocks of the last level's span. The blocks are read off by pushing a "comb" through the factors: row ``i``
        holds a one at feature ``i`` of every group, and groups never interact. That costs ``M`` gathers of a
        ``(span, d_in)`` tensor, after which every row pays one block-diagonal matmul, as OFT's do, instead of ``M``
        permuted passes.
        """
        span = self.span
        groups = self.shape.d_in // span
        comb = torch.eye(span, dtype=self.q.dtype, device=self.q.device).repeat(1, groups)
        comb = self._through_factors(comb, self.factor_blocks(scale))
        return comb.reshape(span, groups, span).transpose(0, 1)

    def rotate_input(self, x: torch.Tensor, scale: float, transpose: bool = False) -> torch.Tensor:
        if not self.composes:
            return self._through_factors(x, self.factor_blocks(scale), transpose)
        blocks = self.composed_blocks(scale)
        return block_diagonal_matmul(x, blocks.transpose(-1, -2) if transpose else blocks)

    def _through_factors(self, x: torch.Tensor, blocks: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """``x @ R`` (``x @ Rᵀ`` when ``transpose``) one permuted block-diagonal factor at a time."""
        # x @ R = x @ B_{M-1} ⋯ B_0 applies the last factor first; x @ Rᵀ applies B_0ᵀ first.
        levels = range(len(blocks)) if transpose else reversed(range(len(blocks)))
        for level in levels:
            factor = blocks[level].transpose(-1, -2) if transpose else blocks[level]
            x = block_diagonal_matmul(x[..., self.perms[level]], factor)[..., self.inverse_perms[level]]
        return x

    def output_scale(self, scale: float) -> torch.Tensor:
        """``m(s) = 1 + s (m - 1)``, shape ``(d_out,)``."""
        return 1.0 + scale * (self.magnitude - 1.0)

    def map_output(self, z: torch.Tensor, scale: float, inverse: bool = False) -> torch.Tensor:
        factor = self.output_scale(scale)
        return z / factor if inverse else z * factor

    def orthogonal(self, scale: float) -> bool:
        return self.config.cayley == "exact"

    def exactly_invertible(self, scale: float) -> bool:
        # Dividing by m(s) undoes the scale to float rounding unless an entry is (near) zero.
        return self.orthogonal(scale) and bool((self.output_scale(scale).abs() > 1e-6).all())
