"""Dense: a full weight update ``ΔW = s · D`` per layer, what a ``.diff`` file holds (LyCORIS "full", ComfyUI).

Importing a dense file (``studio.adapters.formats``) gives this adapter rather than a full-rank LoRA: ``D`` is stored
as it was written, so the import is exact with no factorisation, and it costs ``d_out · d_in`` numbers per layer,
where a LoRA needs ``r · (d_in + d_out)`` with ``r >= min(d_in, d_out)`` (twice that on a square layer) and, with one
rank per file, the widest layer's rank padded onto every narrower one. Exporting any adapter as dense (``W' - W``
at its strength) and importing it back reproduces the adapted weights, orthogonal methods included; what dense
cannot keep is an orthogonal method's geometry under a new strength: ``s · D`` moves linearly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from studio.adapters.base import AdditiveAdapter, LayerShape


@dataclass(kw_only=True)
class DenseConfig:
    """A dense update ``ΔW = D`` of the flattened ``(d_out, d_in)`` weight, ``D = 0`` at init; no hyperparameters."""

    method: ClassVar[str] = "dense"


class DenseAdapter(AdditiveAdapter):
    """``ΔW = s · D`` with ``D (d_out, d_in)`` zero at init. Parameters: ``d_out · d_in`` (the layer's own count)."""

    def __init__(self, config: DenseConfig, shape: LayerShape, *, generator: torch.Generator | None = None) -> None:
        super().__init__(config, shape)
        self.D = nn.Parameter(torch.zeros(shape.d_out, shape.d_in))

    def delta_weight(self, scale: float) -> torch.Tensor:
        return scale * self.D
