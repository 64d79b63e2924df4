"""ETHER and ETHER+: per-block hyperplane reflections of the input features (Bini et al. 2024, arXiv 2405.20271).

Both are block-diagonal over the **input** features, as in the paper (``W' = W · blockdiag(H_k)``; ``H`` is
symmetric so ``Hᵀ = H``). The official LLM code (``mwbini/ether``, ``lit_gpt/ether.py``) instead reshapes the
``(d_out, d_in)`` weight to ``(n, d_out, d_in/n)`` in memory order, i.e. it applies one reflection per output-row
group repeated over input segments; its checkpoints are not interchangeable with this module.

Strength semantics (this library's choice; the paper has none):

* **ETHER** ``H = I - 2ûûᵀ`` is a reflection (``det = -1``), which lies on no real one-parameter group through ``I``.
  We use ``H(s) = Re(H^s) = I - (1 - cos πs) ûûᵀ`` (:func:`~studio.adapters.maths.householder`). Guaranteed for
  every ``s``: ``H(s)`` is symmetric with eigenvalues ``1`` and ``cos πs``, so it never amplifies
  (``‖H(s)‖₂ <= 1``) and ``‖H(s) - I‖₂ = 1 - cos πs <= 2``; ``H(0) = I``. Orthogonal **only at integer s**, where
  ``H(s) = H^s`` (``I`` for even, ``H`` for odd ``s``); at half-integers the ``û`` component is removed. ETHER is
  **not** the identity at init: the paper initialises ``u`` randomly and the transform is a reflection
  (``‖H - I‖₂ = 2``) from the first step.
* **ETHER+** ``H = I - ûûᵀ + v̂v̂ᵀ`` (not orthogonal in general), with ``v = -u`` at init so ``H = I``. Strength moves
  the added direction along the great circle from ``±û`` to ``v̂``: ``ŵ(s) = normalize(σû + s (v̂ - σû))`` with
  ``σ = sign(û·v̂)`` (``ûûᵀ`` does not see the sign), and ``H(s) = I - ûûᵀ + ŵŵᵀ``. Guaranteed for every ``s``:
  ``H(s)`` stays in the ETHER+ family, is symmetric, ``‖H(s) - I‖₂ = |sin ∠(û, ŵ)| <= 1``; ``H(0) = I``,
  ``H(1) = H``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from studio.adapters.base import LayerShape, MultiplicativeAdapter, check_divides, check_positive_int


@dataclass(kw_only=True)
class ETHERConfig:
    """ETHER (Bini et al. 2024, arXiv 2405.20271): one Householder reflection per input-feature block."""

    method: ClassVar[str] = "ether"
    num_blocks: int = 1
    """Number of diagonal blocks over the input features; must divide ``d_in``."""

    def __post_init__(self) -> None:
        check_positive_int("ETHERConfig.num_blocks", self.num_blocks, "pass e.g. num_blocks=4")


@dataclass(kw_only=True)
class ETHERPlusConfig:
    """ETHER+ (Bini et al. 2024): per block ``I - ûûᵀ + v̂v̂ᵀ``, identity at init (``v = -u``)."""

    method: ClassVar[str] = "etherplus"
    num_blocks: int = 1
    """Number of diagonal blocks; must divide ``d_in`` (and ``d_out`` when two-sided)."""
    two_sided: bool = False
    """Also transform the output features: ``W' = H_out · W · H_inᵀ``."""

    def __post_init__(self) -> None:
        check_positive_int("ETHERPlusConfig.num_blocks", self.num_blocks, "pass e.g. num_blocks=4")


def _blocks(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.reshape(*x.shape[:-1], n, x.shape[-1] // n)


def reflect_blocks(x: torch.Tensor, u: torch.Tensor, scale: float) -> torch.Tensor:
    """``x @ blockdiag(H_k(s))`` with ``H_k(s) = I - (1 - cos πs) û_k û_kᵀ``, in ``O(d)`` per row.

    Args:
        x: ``(..., n*b)``.
        u: ``(n, b)`` normals.
        scale: ``s``.

    Returns:
        ``(..., n*b)``.
    """
    unit = F.normalize(u, dim=-1)
    xb = _blocks(x, u.shape[0])
    along = (xb * unit).sum(-1, keepdim=True)
    return (xb - (1.0 - math.cos(math.pi * scale)) * along * unit).reshape(x.shape)


def etherplus_direction(u: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """The added direction ``ŵ(s) = normalize(σû + s (v̂ - σû))``, ``σ = sign(û·v̂)``; shape ``(n, b)``.

    ``‖σû + s(v̂ - σû)‖² = 1 - 2s(1-c) + 2s²(1-c)`` with ``c = |û·v̂|`` is at least 1/2, so the normalisation is
    always well defined and smooth (also at init, where ``v̂ = -û``).
    """
    u_hat, v_hat = F.normalize(u, dim=-1), F.normalize(v, dim=-1)
    sign = torch.where((u_hat * v_hat).sum(-1, keepdim=True) >= 0, 1.0, -1.0).to(u.dtype)
    start = sign * u_hat
    return F.normalize(start + scale * (v_hat - start), dim=-1)


def etherplus_blocks(x: torch.Tensor, u: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """``x @ blockdiag(I - û_k û_kᵀ + ŵ_k(s) ŵ_k(s)ᵀ)`` in ``O(d)`` per row; ``x`` is ``(..., n*b)``."""
    u_hat, w_hat = F.normalize(u, dim=-1), etherplus_direction(u, v, scale)
    xb = _blocks(x, u.shape[0])
    out = xb - (xb * u_hat).sum(-1, keepdim=True) * u_hat + (xb * w_hat).sum(-1, keepdim=True) * w_hat
    return out.reshape(x.shape)


class ETHERAdapter(MultiplicativeAdapter):
    """One Householder normal per input block, Kaiming-uniform at init (as the official code).

    Parameters: ``d_in`` (``num_blocks`` normals of length ``d_in / num_blocks``).
    """

    rows_cheaply = True

    def __init__(self, config: ETHERConfig, shape: LayerShape, *, generator: torch.Generator | None = None) -> None:
        super().__init__(config, shape)
        check_divides("ETHERConfig.num_blocks", config.num_blocks, shape.d_in, "input features")
        self.u = nn.Parameter(torch.empty(config.num_blocks, shape.d_in // config.num_blocks))
        nn.init.kaiming_uniform_(self.u, a=math.sqrt(5), generator=generator)

    def rotate_input(self, x: torch.Tensor, scale: float, transpose: bool = False) -> torch.Tensor:
        return reflect_blocks(x, self.u, scale)  # H(s) is symmetric: x @ H = x @ Hᵀ

    def orthogonal(self, scale: float) -> bool:
        return float(scale).is_integer()


class ETHERPlusAdapter(MultiplicativeAdapter):
    """ETHER+ with ``u`` Kaiming-uniform and ``v = -u`` (identity at init), optionally also on the output side.

    Parameters: ``2 d_in`` (plus ``2 d_out`` when ``two_sided``). Two-sided: ``W' = H_out(s) · W · H_in(s)``.
    """

    rows_cheaply = True

    def __init__(
        self, config: ETHERPlusConfig, shape: LayerShape, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__(config, shape)
        n = config.num_blocks
        check_divides("ETHERPlusConfig.num_blocks", n, shape.d_in, "input features")
        self.u, self.v = self._pair(n, shape.d_in // n, generator)
        self.has_output_map = config.two_sided
        if config.two_sided:
            check_divides("ETHERPlusConfig.num_blocks", n, shape.d_out, "output features (two_sided=True)")
            self.u_out, self.v_out = self._pair(n, shape.d_out // n, generator)

    @staticmethod
    def _pair(n: int, size: int, generator: torch.Generator | None) -> tuple[nn.Parameter, nn.Parameter]:
        u = torch.empty(n, size)
        nn.init.kaiming_uniform_(u, a=math.sqrt(5), generator=generator)
        return nn.Parameter(u), nn.Parameter(-u.clone())

    def rotate_input(self, x: torch.Tensor, scale: float, transpose: bool = False) -> torch.Tensor:
        return etherplus_blocks(x, self.u, self.v, scale)  # symmetric

    def map_output(self, z: torch.Tensor, scale: float, inverse: bool = False) -> torch.Tensor:
        if not self.has_output_map:
            return z
        if inverse:
            raise ValueError("ETHER+ has no exact inverse (it may be singular); the layer keeps a weight copy instead")
        return etherplus_blocks(z, self.u_out, self.v_out, scale)

    def orthogonal(self, scale: float) -> bool:
        return False
