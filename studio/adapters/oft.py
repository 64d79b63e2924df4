"""OFT: block-diagonal Cayley rotations of the input features (Qiu et al. 2023, arXiv 2306.07280).

``W' = W Rᵀ`` with ``R = blockdiag(R_1, ..., R_r)`` and ``R_k = Cayley(s · Q_k)``; the strength ``s`` scales the
skew generator, so ``R`` is a rotation for every real ``s`` (``s = 0``: ``I``; ``s = -1``: ``Rᵀ``). PEFT and A1111
differ here: PEFT refuses a strength for OFT and A1111/kohya use ``I + s(R - I)``, which leaves the group.
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
from studio.adapters.maths import block_diagonal_matmul, cayley, cayley_neumann, project_frobenius_ball, skew_from_triu


@dataclass(kw_only=True)
class OFTConfig:
    """OFT (Qiu et al. 2023, arXiv 2306.07280): ``W' = W Rᵀ``, ``R = blockdiag(Cayley(Q_1), ...)``, ``Q = 0``."""

    method: ClassVar[str] = "oft"
    block_size: int | None = None
    """Size ``b`` of each rotation block; exclusive with ``num_blocks``; neither means 32."""
    num_blocks: int | None = None
    """Number ``r`` of blocks (``b = d_in / r``); exclusive with ``block_size``."""
    cayley: Literal["exact", "neumann"] = "exact"
    """``exact``: a linear solve, orthogonal for every strength. ``neumann``: a truncated series, approximate."""
    neumann_terms: int = 4
    """Series terms for ``cayley="neumann"`` (PEFT's default ``num_cayley_neumann_terms=5`` equals 4 here)."""
    coft: bool = False
    """COFT: project each skew block into the Frobenius ball ``‖Q‖_F <= coft_eps`` in the forward pass."""
    coft_eps: float = 6e-5
    """COFT radius."""
    block_share: bool = False
    """Share one rotation block across all blocks of a layer."""

    def __post_init__(self) -> None:
        check_optional_blocks("OFTConfig", self.block_size, self.num_blocks)
        check_field(
            self.cayley in ("exact", "neumann"), "OFTConfig.cayley", self.cayley, "allowed: exact, neumann", ""
        )
        check_positive_int("OFTConfig.neumann_terms", self.neumann_terms, "pass e.g. neumann_terms=4")
        check_field(self.coft_eps > 0, "OFTConfig.coft_eps", self.coft_eps, "need > 0", "pass e.g. coft_eps=6e-5")


def cayley_blocks(
    q: torch.Tensor,
    block_size: int,
    scale: float,
    *,
    neumann_terms: int | None = None,
    coft_eps: float | None = None,
) -> torch.Tensor:
    """Rotation blocks ``Cayley(s · Q_k)`` from stored upper triangles.

    Args:
        q: ``(n, b(b-1)/2)`` strict upper triangles of the skew generators.
        block_size: ``b``.
        scale: strength ``s``, applied to the generator (after the COFT projection, so ``s`` also scales the radius).
        neumann_terms: use the truncated Neumann series with this many terms instead of the exact solve.
        coft_eps: if given, project each ``Q_k`` into ``‖Q_k‖_F <= coft_eps`` first (COFT).

    Returns:
        ``(n, b, b)`` rotations (approximate ones with ``neumann_terms``).
    """
    skew = skew_from_triu(q, block_size)
    if coft_eps is not None:
        skew = project_frobenius_ball(skew, coft_eps)
    skew = scale * skew
    return cayley(skew) if neumann_terms is None else cayley_neumann(skew, neumann_terms)


class OFTAdapter(MultiplicativeAdapter):
    """Block-diagonal Cayley rotation on the input side; ``Q = 0`` at init (identity).

    Parameters: ``r · b(b-1)/2`` for ``r`` blocks of size ``b`` (``b(b-1)/2`` with ``block_share``). Stored as
    ``q`` of shape ``(r or 1, b(b-1)/2)``: the layout of PEFT's ``oft_R.<name>.weight``.
    """

    rows_cheaply = True

    def __init__(self, config: OFTConfig, shape: LayerShape, *, generator: torch.Generator | None = None) -> None:
        super().__init__(config, shape)
        blocks = resolve_blocks("OFTConfig", config.block_size, config.num_blocks, shape.d_in)
        self.num_blocks, self.block_size = blocks
        rows = 1 if config.block_share else self.num_blocks
        self.q = nn.Parameter(torch.zeros(rows, self.block_size * (self.block_size - 1) // 2))

    def blocks(self, scale: float) -> torch.Tensor:
        """The ``(r, b, b)`` rotation blocks of ``R(s)``."""
        config = self.config
        blocks = cayley_blocks(
            self.q,
            self.block_size,
            scale,
            neumann_terms=config.neumann_terms if config.cayley == "neumann" else None,
            coft_eps=config.coft_eps if config.coft else None,
        )
        return blocks.expand(self.num_blocks, -1, -1)

    def rotate_input(self, x: torch.Tensor, scale: float, transpose: bool = False) -> torch.Tensor:
        blocks = self.blocks(scale)
        return block_diagonal_matmul(x, blocks.transpose(-1, -2) if transpose else blocks)

    def orthogonal(self, scale: float) -> bool:
        return self.config.cayley == "exact"
