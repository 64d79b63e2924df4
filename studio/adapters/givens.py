"""GOFT and qGOFT: products of Givens rotations in ``⌈log2 d⌉`` parallel stages (Ma et al. 2024, arXiv 2404.04316).

Both act on the input features: ``W' = W Rᵀ``, ``R = G_L ⋯ G_1`` where stage ``G_l`` rotates disjoint feature
pairs (:func:`~studio.adapters.maths.givens_stages`: ``d - 1`` pairs in all, a binary tree). For a k×k conv,
``d = C_in · kh · kw``.

* **GOFT** stores one angle per pair (``d - 1`` parameters, init 0). Strength: every angle is multiplied by ``s``,
  so ``R(s)`` is a rotation for every real ``s``, with ``R(0) = I``.
* **qGOFT** relaxes each 2×2 rotation into a free 2×2 matrix ``M`` (``4(d - 1)`` parameters, init ``I``), kept
  near orthogonal by :meth:`QGOFTAdapter.orthogonality_penalty`. Strength: ``M = G(θ) S`` with ``θ`` the angle of
  ``M``'s rotation (conformal) part and ``S = G(θ)ᵀ M`` the non-rotational residual; then
  ``M(s) = G(sθ) (I + s (S - I))``. The angle scales like GOFT's and the residual linearly, so ``M(0) = I``,
  ``M(1) = M``, and a block that is an exact rotation (``S = I``) stays an exact rotation for every ``s``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from studio.adapters.base import LayerShape, MultiplicativeAdapter, check_field
from studio.adapters.maths import apply_givens_tree, givens_stages, rotation_2x2

#: Layers at least this wide (outputs) keep the Givens tree on the activations: the weight path's extra GEMM
#: (``d_out·d_in`` per row) then costs more than the tree (about ``2·d_in`` per row). ``bench_adapters.py``, two
#: threads, GOFT ÷ LoRA: at 1024 tokens × 1280 features 1.14× on the activations against 1.86× on the weight;
#: at 4096 tokens × 640 features 1.33× against 1.24×, so narrower layers stay on the weight.
STAGES_ON_ROWS_WIDTH = 1024


@dataclass(kw_only=True)
class GOFTConfig:
    """GOFT (Ma et al. 2024, arXiv 2404.04316): ``R`` = ``d_in - 1`` Givens rotations in ``⌈log2 d_in⌉`` stages.

    No hyperparameters: the rotation count is fixed by the layer width.
    """

    method: ClassVar[str] = "goft"


@dataclass(kw_only=True)
class QGOFTConfig:
    """qGOFT (Ma et al. 2024): GOFT with each 2x2 rotation relaxed to a free 2x2 matrix, softly orthogonal."""

    method: ClassVar[str] = "qgoft"
    penalty_weight: float = 1.0
    """Multiplier of ``Σ ‖MᵀM - I‖²_F`` in :func:`studio.adapters.orthogonality_penalty`."""

    def __post_init__(self) -> None:
        check_field(
            self.penalty_weight >= 0,
            "QGOFTConfig.penalty_weight",
            self.penalty_weight,
            "need >= 0",
            "pass e.g. penalty_weight=1.0",
        )


class _PairStagesAdapter(MultiplicativeAdapter):
    """Shared stage bookkeeping: the ``d - 1`` blocks are stored stage by stage, ``stage_sizes`` blocks each."""

    def __init__(self, config: GOFTConfig | QGOFTConfig, shape: LayerShape) -> None:
        super().__init__(config, shape)
        if shape.d_in < 2:
            raise ValueError(f"{type(config).__name__} needs d_in >= 2 input features; this layer has {shape.d_in}")
        self.stage_sizes = [len(i) for i, _ in givens_stages(shape.d_in)]
        self.rows_cheaply = shape.d_out >= STAGES_ON_ROWS_WIDTH  # the tree: ~2·d_in multiply-adds per row

    def stage_blocks(self, scale: float) -> torch.Tensor:
        """``(d - 1, 2, 2)`` blocks at strength ``scale``, stage by stage."""
        raise NotImplementedError

    def rotate_input(self, x: torch.Tensor, scale: float, transpose: bool = False) -> torch.Tensor:
        return apply_givens_tree(x, list(self.stage_blocks(scale).split(self.stage_sizes)), transpose)


class GOFTAdapter(_PairStagesAdapter):
    """``d - 1`` Givens angles, zero at init (identity). Parameters: ``d_in - 1``."""

    def __init__(self, config: GOFTConfig, shape: LayerShape, *, generator: torch.Generator | None = None) -> None:
        super().__init__(config, shape)
        self.angles = nn.Parameter(torch.zeros(shape.d_in - 1))

    def stage_blocks(self, scale: float) -> torch.Tensor:
        return rotation_2x2(scale * self.angles)

    def orthogonal(self, scale: float) -> bool:
        return True


def scaled_quasi_rotation(blocks: torch.Tensor, scale: float) -> torch.Tensor:
    """qGOFT strength: ``M(s) = G(sθ) (I + s (G(θ)ᵀ M - I))`` per 2×2 block.

    ``θ = atan2(M₁₀ - M₀₁, M₀₀ + M₁₁)`` is the angle of ``M``'s rotation part (for ``M = G(φ)`` it is ``φ``).

    Args:
        blocks: ``(n, 2, 2)``.
        scale: ``s``.

    Returns:
        ``(n, 2, 2)``; ``s = 0`` gives ``I`` and ``s = 1`` gives ``blocks`` (to rounding).
    """
    theta = torch.atan2(blocks[:, 1, 0] - blocks[:, 0, 1], blocks[:, 0, 0] + blocks[:, 1, 1])
    residual = rotation_2x2(theta).transpose(-1, -2) @ blocks
    eye = torch.eye(2, dtype=blocks.dtype, device=blocks.device)
    return rotation_2x2(scale * theta) @ (eye + scale * (residual - eye))


class QGOFTAdapter(_PairStagesAdapter):
    """``d - 1`` free 2×2 blocks, identity at init. Parameters: ``4 (d_in - 1)``.

    Not exactly orthogonal, so merging keeps a copy of the weight for an exact unmerge.
    """

    def __init__(self, config: QGOFTConfig, shape: LayerShape, *, generator: torch.Generator | None = None) -> None:
        super().__init__(config, shape)
        self.blocks = nn.Parameter(torch.eye(2).repeat(shape.d_in - 1, 1, 1))

    def stage_blocks(self, scale: float) -> torch.Tensor:
        return scaled_quasi_rotation(self.blocks, scale)

    def orthogonal(self, scale: float) -> bool:
        return False

    def orthogonality_penalty(self) -> torch.Tensor:
        """``Σ_k ‖M_kᵀ M_k - I‖²_F`` over the stored blocks (zero iff every block is orthogonal); a scalar."""
        eye = torch.eye(2, dtype=self.blocks.dtype, device=self.blocks.device)
        gram = self.blocks.transpose(-1, -2) @ self.blocks
        return ((gram - eye) ** 2).sum()

    def penalty(self) -> torch.Tensor:
        """The trainer's regulariser: ``penalty_weight · Σ_k ‖M_kᵀ M_k - I‖²_F``."""
        return self.config.penalty_weight * self.orthogonality_penalty()
