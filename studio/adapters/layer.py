"""``AdapterLayer``: the wrapper that holds named adapters around one ``nn.Linear`` or ``nn.Conv2d``.

See :mod:`studio.adapters.base` for the conventions every adapter follows (flattened weights, input-side
multiplicative transforms, composition order, the forward paths).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from studio.adapters.base import Adapter, LayerShape, layer_shape
from studio.adapters.registry import AdapterConfig, adapter_class

logger = logging.getLogger(__name__)


@dataclass
class _Merged:
    name: str
    scale: float
    saved: torch.Tensor | None  # pre-merge weight, kept only when the inverse is not exact


def _check_base(base: nn.Module) -> None:
    if isinstance(base, AdapterLayer):
        raise TypeError("base is already an AdapterLayer; call its add_adapter() to stack another adapter")
    if not isinstance(base, nn.Linear | nn.Conv2d):
        raise TypeError(f"AdapterLayer wraps nn.Linear or nn.Conv2d; got {type(base).__name__}")
    if isinstance(base, nn.Conv2d) and base.groups != 1:
        raise ValueError(f"Conv2d groups={base.groups} is not supported; adapters wrap convs with groups=1")
    if isinstance(base, nn.Conv2d) and base.padding_mode != "zeros":
        raise ValueError(f"Conv2d padding_mode={base.padding_mode!r} is not supported; only 'zeros'")


class AdapterLayer(nn.Module):
    """Wraps an ``nn.Linear`` / ``nn.Conv2d`` (groups=1) and holds named adapters in ``self.adapters``.

    Adapter parameters live at ``adapters.<name>.<param>``; strengths in ``scales[name]`` (default 1.0).
    """

    def __init__(self, base: nn.Linear | nn.Conv2d) -> None:
        super().__init__()
        _check_base(base)
        self.base_layer = base
        self.adapters = nn.ModuleDict()
        self.scales: dict[str, float] = {}
        self.disabled = False
        self.weight_path: bool | None = None
        """Where Linear / 1×1-conv layers apply multiplicative adapters: None picks per call (see ``forward``)."""
        self._merged: list[_Merged] = []

    @property
    def shape(self) -> LayerShape:
        return layer_shape(self.base_layer)

    @property
    def weight(self) -> nn.Parameter:
        """The base layer's weight (code that reads ``layer.weight.dtype`` keeps working after wrapping)."""
        return self.base_layer.weight

    @property
    def bias(self) -> nn.Parameter | None:
        """The base layer's bias."""
        return self.base_layer.bias

    @property
    def merged_names(self) -> list[str]:
        """Adapters currently merged into the base weight, in merge order."""
        return [m.name for m in self._merged]

    def add_adapter(self, name: str, config: AdapterConfig, *, generator: torch.Generator | None = None) -> Adapter:
        """Create adapter ``name`` from ``config`` at strength 1.0, initialised as in its paper.

        Every method starts as the identity except ETHER, which starts as a reflection (see ``ether.py``).

        Raises:
            ValueError: for an empty, dotted or existing name, or sizes the layer cannot take.
        """
        if not name or "." in name or name in self.adapters:
            raise ValueError(
                f"adapter name {name!r} is invalid here: it must be non-empty, contain no '.', and not exist "
                f"already (existing: {list(self.adapters)}); pick another name"
            )
        adapter = adapter_class(config)(config, self.shape, generator=generator)
        weight = self.base_layer.weight
        self.adapters[name] = adapter.to(device=weight.device, dtype=weight.dtype)
        self.scales[name] = 1.0
        return self.adapters[name]

    def set_scale(self, name: str, scale: float) -> None:
        """Set the strength of adapter ``name``; see each method for what ``scale`` means.

        Raises:
            ValueError: for an unknown or merged adapter, or a non-finite scale.
        """
        self._require(name)
        if not math.isfinite(float(scale)):
            raise ValueError(f"scale={scale!r} for adapter {name!r} must be a finite number")
        if name in self.merged_names:
            raise ValueError(f"adapter {name!r} is merged; call unmerge() before changing its scale")
        self.scales[name] = float(scale)

    def enable(self) -> None:
        """Apply the adapters again after :meth:`disable`."""
        self.disabled = False

    def disable(self) -> None:
        """Make forward return the base layer's output; merged adapters are unmerged first."""
        if self._merged:
            logger.info("unmerging %s before disabling adapters", self.merged_names)
            self.unmerge()
        self.disabled = True

    def delete_adapter(self, name: str) -> None:
        """Remove adapter ``name``. Raises ValueError if it is unknown or merged."""
        self._require(name)
        if name in self.merged_names:
            raise ValueError(f"adapter {name!r} is merged; call unmerge() before deleting it")
        del self.adapters[name]
        del self.scales[name]

    def _require(self, name: str) -> None:
        if name not in self.adapters:
            raise ValueError(f"no adapter named {name!r} on this layer; existing: {list(self.adapters)}")

    def _read_weight(self) -> torch.Tensor:
        return self.base_layer.weight.detach().reshape(self.shape.d_out, self.shape.d_in)

    def _write_weight(self, flat: torch.Tensor) -> None:
        weight = self.base_layer.weight
        weight.data.copy_(flat.reshape(weight.shape))

    @torch.no_grad()
    def merge(self, names: list[str] | None = None) -> None:
        """Fold adapters into the base weight, in the order given (default: every unmerged adapter).

        Raises:
            ValueError: for unknown or already merged names, or when an adapter produces non-finite weights (the
                message names it; adapters before it in ``names`` stay merged, it and later ones do not).
        """
        names = [n for n in self.adapters if n not in self.merged_names] if names is None else list(names)
        for name in names:
            self._require(name)
            if name in self.merged_names:
                raise ValueError(f"adapter {name!r} is already merged; merged: {self.merged_names}")
        for name in names:
            adapter, scale = self.adapters[name], self.scales[name]
            weight = self._read_weight()
            saved = None if adapter.exactly_invertible(scale) else weight.clone()
            merged = adapter.merge_weight(weight, scale)
            if not torch.isfinite(merged).all():
                raise ValueError(
                    f"adapter {name!r} ({adapter.config.method}) gives non-finite merged weights at scale {scale}; "
                    "its parameters hold NaN/inf or overflow the weight dtype; nothing of it was merged"
                )
            self._write_weight(merged)
            self._merged.append(_Merged(name, scale, saved))

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the base weight, undoing merges in reverse order (exact inverse, or the kept copy)."""
        while self._merged:
            record = self._merged.pop()
            if record.saved is not None:
                self._write_weight(record.saved)
            else:
                self._write_weight(self.adapters[record.name].unmerge_weight(self._read_weight(), record.scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Disabled → base; otherwise base (with merged adapters) plus the unmerged adapters in order.

        Args:
            x: ``(..., in_features)`` for a Linear, ``(B, C_in, H, W)`` for a Conv2d.

        Returns:
            The base layer's output shape.
        """
        merged = set(self.merged_names)
        active = [(a, self.scales[n]) for n, a in self.adapters.items() if n not in merged]
        if self.disabled or not active:
            return self.base_layer(x)
        base = self.base_layer
        pointwise = isinstance(base, nn.Linear) or base.kernel_size == (1, 1)
        if pointwise and not self._on_weight(x, active):
            # The bias rides in the base GEMM (addmm) unless an output map (BOFT's scale) comes after it.
            bias_after = any(adapter.has_output_map for adapter, _ in active)
            out = self._pointwise(x, active, None if bias_after else base.bias)
            if not bias_after or base.bias is None:
                return out
            return out + (base.bias if isinstance(base, nn.Linear) else base.bias[:, None, None])
        weight = base.weight.reshape(self.shape.d_out, self.shape.d_in)
        for adapter, scale in active:
            weight = adapter.merge_weight(weight, scale)
        if isinstance(base, nn.Linear):
            return F.linear(x, weight, base.bias)
        kernel = weight.reshape(base.weight.shape)
        return F.conv2d(x, kernel, base.bias, base.stride, base.padding, base.dilation)

    def _on_weight(self, x: torch.Tensor, active: list[tuple[Adapter, float]]) -> bool:
        """Whether a pointwise layer applies its adapters to the weight rather than to the activations.

        On the weight, training pays one extra GEMM per step: the gradient of the transformed weight,
        ``gᵀx``, which a frozen base weight otherwise never needs. On the activations it pays the transform
        per row, with tensors saved per pass. One cheap pass per row (OFT's block-diagonal matmul, BOFT's
        butterflies composed into blocks narrow against the layer's outputs, ETHER's reflections;
        ``rows_cheaply``) beats the GEMM, so those stay on the activations, as do additive adapters (a low-rank
        or Kronecker delta). The others (GOFT's log-depth Givens stages, BOFT's wide blocks) go on the weight once
        the batch has more rows than the layer has outputs (thousands of tokens against hundreds of features),
        except the Givens tree on layers of ``STAGES_ON_ROWS_WIDTH`` or more outputs, where the extra GEMM costs
        more than the tree (``rows_cheaply``).
        """
        if self.weight_path is not None:
            return self.weight_path
        if all(adapter.additive or adapter.rows_cheaply for adapter, _ in active):
            return False
        rows = x.numel() // (x.shape[-1] if isinstance(self.base_layer, nn.Linear) else x.shape[1])
        return rows > self.shape.d_out

    def _pointwise(
        self, x: torch.Tensor, active: list[tuple[Adapter, float]], bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``W_k x (+ bias)`` for Linear / 1×1 conv, peeling the last adapter off ``W_k = f_k(W_{k-1})``.

        ``bias`` is added by the base layer's own GEMM; callers pass it only when no output map follows.
        """
        if not active:
            return self._base(x, bias)
        adapter, scale = active[-1]
        if adapter.additive:
            delta = self._features(adapter.delta_forward, self._sampled(x), scale)
            return self._pointwise(x, active[:-1], bias) + delta
        # W_k x = L (W_{k-1} (x @ R)) for rows: rotate the input, then map the output.
        inner = self._pointwise(self._features(adapter.rotate_input, x, scale), active[:-1], bias)
        return self._features(adapter.map_output, inner, scale) if adapter.has_output_map else inner

    def _base(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        base = self.base_layer
        if isinstance(base, nn.Linear):
            return F.linear(x, base.weight, bias)
        return F.conv2d(x, base.weight, bias, base.stride, base.padding, base.dilation)

    def _features(
        self, fn: Callable[[torch.Tensor, float], torch.Tensor], x: torch.Tensor, scale: float
    ) -> torch.Tensor:
        """Apply a row-wise feature map to the channel dimension (last for Linear, dim 1 for convs)."""
        if isinstance(self.base_layer, nn.Linear):
            return fn(x, scale)
        return fn(x.movedim(1, -1), scale).movedim(-1, 1)

    def _sampled(self, x: torch.Tensor) -> torch.Tensor:
        """The input pixels a 1×1 conv reads: zero padding, then the stride grid (identity for a Linear)."""
        base = self.base_layer
        if isinstance(base, nn.Linear):
            return x
        if not isinstance(base.padding, str):  # "same"/"valid" both mean no padding for a 1×1 kernel
            ph, pw = base.padding
            if ph or pw:
                x = F.pad(x, (pw, pw, ph, ph))
        sh, sw = base.stride
        return x[..., ::sh, ::sw]
