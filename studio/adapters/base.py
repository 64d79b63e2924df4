"""The adapter contract: small modules with a merge contract, which ``AdapterLayer`` (``layer.py``) holds.

Conventions every method follows:

* **Flattened weights.** ``W`` is ``(d_out, d_in)``: ``d_in`` is ``in_features`` for a Linear and
  ``C_in · kh · kw`` for a Conv2d, in the order of ``weight.reshape(d_out, -1)``.
* **Additive adapters** (LoRA, DiffuseKronA, LoKr): ``W' = W + ΔW(s)``; ``ΔW`` is linear in the strength ``s``.
* **Multiplicative adapters** (OFT, BOFT, GOFT, qGOFT, ETHER, ETHER+) act on the **input side**:
  ``W' = L(s) · W · R(s)ᵀ``, i.e. ``y = L(s) (W (R(s)ᵀ x)) + b``, the OFT paper's ``z = (R W₀)ᵀ x`` written with
  torch's ``(d_out, d_in)`` weights, and PEFT's convention. For a k×k conv, ``R`` acts on the flattened
  ``(C_in, kh, kw)`` dimension. ``L`` is the identity except for BOFT (a diagonal output scale) and two-sided ETHER+.
  The strength scales the generator (Cayley ``Q``, Givens angles, ...), not ``R - I``.
* **Several adapters on one layer** compose in insertion order, each acting on the weight the previous ones
  produced: ``W_k = f_k(W_{k-1})``. Two additive adapters therefore add up, ``W + ΔW_1 + ΔW_2``; an additive
  adapter added after a multiplicative one is not rotated. ``merge()`` applies exactly this sequence.
* **Forward.** Disabled → the base layer. Otherwise the base layer (holding any merged adapters) plus the unmerged
  adapters. Linear and 1×1 conv layers never build ``W'``: rotations act on the input features and additive
  adapters add ``ΔW x`` computed from their factors. k×k convs build the effective kernel once per call (one
  weight-sized tensor, far cheaper than unfolding activations to ``(N, C_in·kh·kw)``) and run one convolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from studio.adapters.maths import divisors

DEFAULT_BLOCK_SIZE = 32


@dataclass(frozen=True)
class LayerShape:
    """Sizes of the wrapped layer as the adapters see them."""

    d_out: int
    """Output features (``out_features`` or ``C_out``)."""
    d_in: int
    """Flattened input features (``in_features`` or ``C_in · kh · kw``)."""
    in_channels: int
    """``in_features`` or ``C_in``."""
    kernel_numel: int
    """``kh · kw``; 1 for a Linear."""


def layer_shape(base: nn.Linear | nn.Conv2d) -> LayerShape:
    """The :class:`LayerShape` adapters see for ``base``."""
    if isinstance(base, nn.Linear):
        return LayerShape(base.out_features, base.in_features, base.in_features, 1)
    kh, kw = base.kernel_size
    return LayerShape(base.out_channels, base.in_channels * kh * kw, base.in_channels, kh * kw)


def check_divides(field: str, value: int, dim: int, what: str) -> None:
    """Raise a ValueError naming ``field`` when ``value`` does not divide ``dim``, listing the valid values."""
    if dim % value:
        raise ValueError(f"{field}={value} does not divide this layer's {what} ({dim}); use one of {divisors(dim)}")


def resolve_blocks(owner: str, block_size: int | None, num_blocks: int | None, dim: int) -> tuple[int, int]:
    """Turn ``block_size`` / ``num_blocks`` (at most one given) into ``(num_blocks, block_size)`` tiling ``dim``.

    Neither given means ``block_size = DEFAULT_BLOCK_SIZE``.

    Raises:
        ValueError: if the blocks do not tile ``dim``; the message lists the valid sizes.
    """
    if num_blocks is not None:
        check_divides(f"{owner}.num_blocks", num_blocks, dim, "input features")
        return num_blocks, dim // num_blocks
    size = DEFAULT_BLOCK_SIZE if block_size is None else block_size
    check_divides(f"{owner}.block_size", size, dim, "input features")
    return dim // size, size


def check_field(ok: bool, name: str, value: Any, allowed: str, fix: str) -> None:
    """Raise ``ValueError`` naming a config field, its value, what is allowed and the fix unless ``ok``."""
    if not ok:
        raise ValueError(f"{name}={value!r} is invalid: {allowed}; {fix}")


def check_positive_int(name: str, value: Any, fix: str) -> None:
    """:func:`check_field` for an ``int >= 1`` (a bool is refused)."""
    check_field(
        isinstance(value, int) and not isinstance(value, bool) and value >= 1, name, value, "need an int >= 1", fix
    )


def check_optional_blocks(owner: str, block_size: int | None, num_blocks: int | None) -> None:
    """At most one of ``block_size`` / ``num_blocks``, each an ``int >= 1`` when given."""
    if block_size is not None:
        check_positive_int(f"{owner}.block_size", block_size, "pass e.g. block_size=32, or None")
    if num_blocks is not None:
        check_positive_int(f"{owner}.num_blocks", num_blocks, "pass e.g. num_blocks=4, or None")
    check_field(
        block_size is None or num_blocks is None,
        f"{owner}.block_size",
        block_size,
        f"block_size and num_blocks (={num_blocks}) are mutually exclusive",
        "set one of them and leave the other None",
    )


class Adapter(nn.Module):
    """One named adapter on one layer: parameters plus the merge contract.

    Subclasses implement either :class:`AdditiveAdapter` or :class:`MultiplicativeAdapter`. Parameters are created
    on the CPU in float32 from ``generator``; the layer moves them to the base weight's device and dtype.
    """

    additive: ClassVar[bool]
    has_output_map: bool = False
    """Whether the adapter also transforms the layer's outputs (BOFT's scale, two-sided ETHER+)."""

    def __init__(self, config: Any, shape: LayerShape) -> None:
        super().__init__()
        self.config = config
        self.shape = shape

    def merge_weight(self, weight: torch.Tensor, scale: float) -> torch.Tensor:
        """Return ``W'`` for the flattened ``(d_out, d_in)`` weight ``W`` at strength ``scale``."""
        raise NotImplementedError

    def unmerge_weight(self, weight: torch.Tensor, scale: float) -> torch.Tensor:
        """Invert :meth:`merge_weight`; only called when :meth:`exactly_invertible` is True."""
        raise NotImplementedError

    def exactly_invertible(self, scale: float) -> bool:
        """Whether :meth:`unmerge_weight` restores ``W`` to float rounding; if not, the layer keeps a copy."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"{self.config!r}, d_out={self.shape.d_out}, d_in={self.shape.d_in}"

    def penalty(self) -> torch.Tensor | None:
        """A regulariser the trainer adds to its loss (qGOFT's soft orthogonality); None for most methods."""
        return None


class AdditiveAdapter(Adapter):
    """``W' = W + ΔW(s)`` with ``ΔW`` linear in ``s``."""

    additive = True

    def delta_weight(self, scale: float) -> torch.Tensor:
        """The ``(d_out, d_in)`` update ``ΔW(s)``."""
        raise NotImplementedError

    def delta_forward(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        """``x @ ΔW(s)ᵀ`` for ``x`` of shape ``(..., d_in)``; subclasses avoid building ``ΔW``."""
        return x @ self.delta_weight(scale).transpose(0, 1)

    def merge_weight(self, weight: torch.Tensor, scale: float) -> torch.Tensor:
        return weight + self.delta_weight(scale)

    def unmerge_weight(self, weight: torch.Tensor, scale: float) -> torch.Tensor:
        return weight - self.delta_weight(scale)

    def exactly_invertible(self, scale: float) -> bool:
        return True


class MultiplicativeAdapter(Adapter):
    """``W' = L(s) · W · R(s)ᵀ``: an input-side transform ``R`` and an optional output-side ``L``."""

    additive = False
    rows_cheaply: bool = False
    """Whether ``rotate_input`` costs less per row than the weight path's extra GEMM (one block-diagonal or rank-1
    pass; the Givens tree on wide layers): such adapters stay on the activations of a layer whose weight is
    frozen (see :meth:`AdapterLayer._on_weight`)."""

    def rotate_input(self, x: torch.Tensor, scale: float, transpose: bool = False) -> torch.Tensor:
        """``x @ R(s)`` (or ``x @ R(s)ᵀ`` when ``transpose``) for rows ``x`` of shape ``(..., d_in)``.

        The forward pass feeds ``x @ R`` (i.e. ``Rᵀ x`` for column vectors) to the base layer; merging applies
        ``W @ Rᵀ`` to the weight rows.
        """
        raise NotImplementedError

    def map_output(self, z: torch.Tensor, scale: float, inverse: bool = False) -> torch.Tensor:
        """``z @ L(s)ᵀ`` (or ``z @ L(s)^{-ᵀ}``) for rows ``z`` of shape ``(..., d_out)``; identity by default."""
        return z

    def orthogonal(self, scale: float) -> bool:
        """Whether ``R(s)`` is exactly orthogonal (up to float rounding)."""
        raise NotImplementedError

    def transform(self, scale: float) -> torch.Tensor:
        """The dense ``(d_in, d_in)`` matrix ``R(s)``, for tests and inspection (forward never builds it)."""
        eye = torch.eye(self.shape.d_in, dtype=self._dtype(), device=self._device())
        return self.rotate_input(eye, scale)

    def output_transform(self, scale: float) -> torch.Tensor:
        """The dense ``(d_out, d_out)`` matrix ``L(s)``."""
        eye = torch.eye(self.shape.d_out, dtype=self._dtype(), device=self._device())
        return self.map_output(eye, scale).transpose(0, 1)

    def merge_weight(self, weight: torch.Tensor, scale: float) -> torch.Tensor:
        rotated = self.rotate_input(weight, scale, transpose=True)
        if self.has_output_map:
            rotated = self.map_output(rotated.transpose(0, 1), scale).transpose(0, 1)
        return rotated

    def unmerge_weight(self, weight: torch.Tensor, scale: float) -> torch.Tensor:
        # W' = L W Rᵀ and RᵀR = I, so W = (L⁻¹ W') R.
        if self.has_output_map:
            weight = self.map_output(weight.transpose(0, 1), scale, inverse=True).transpose(0, 1)
        return self.rotate_input(weight, scale)

    def exactly_invertible(self, scale: float) -> bool:
        return self.orthogonal(scale) and not self.has_output_map

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _device(self) -> torch.device:
        return next(self.parameters()).device
