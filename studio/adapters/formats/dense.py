"""Dense ``.diff`` files: the full update ``ΔW = W' - W`` of every adapted layer, keyed ``<module>.diff``.

Exact for every method, at the adapter's strength: additive methods write ``ΔW(s)`` from their factors; the
multiplicative ones (OFT, BOFT, GOFT, ETHER, ...) need the base weights and write ``W'(s) - W``, computed in float64.
The layout is LyCORIS's "full" module (``diff``), with diffusers module names; files whose keys carry the
``lora_unet_`` prefix (LyCORIS, ComfyUI) read too. Importing gives a :class:`~studio.adapters.dense.DenseAdapter`.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from studio.adapters.dense import DenseConfig
from studio.adapters.formats.common import (
    KOHYA_PREFIX,
    Adapter,
    BaseLayers,
    Host,
    export_info,
    export_metadata,
    flat_weight,
    module_from_kohya,
    new_header,
    read_safetensors,
    weight_shape_2d,
    write_file,
)

SUFFIX = ".diff"


def detect(path: Path, keys: set[str]) -> bool:
    return any(key.endswith(SUFFIX) for key in keys)


@torch.no_grad()
def delta(host: Host) -> dict[str, torch.Tensor]:
    """``ΔW = W'(s) - W`` per target, shaped like the layer's weight (float32, computed in float64)."""
    out = {}
    for target, layer, adapter, scale in host.items():
        if adapter.additive:
            update = adapter.delta_weight(scale)
        else:
            weight = flat_weight(layer).double()
            update = copy.deepcopy(adapter).double().merge_weight(weight, scale) - weight
        out[target] = update.float().reshape(layer.base_layer.weight.shape)
    return out


def export(adapter: Adapter, host: Host, out: Path, force: bool) -> Path:
    tensors = {f"{target}{SUFFIX}": update for target, update in delta(host).items()}
    return write_file(out, tensors, export_metadata(adapter, "dense"), force)


def read(path: Path, base: BaseLayers | None) -> Adapter:
    tensors, metadata = read_safetensors(path)
    if any(key.endswith(".diff_b") for key in tensors):
        raise ValueError(
            f"adapter {path.name!r} also changes biases (.diff_b); mixstudio adapters change weights only"
        )
    other = sorted(key for key in tensors if not key.endswith(SUFFIX))
    if other:
        raise ValueError(f"adapter {path.name!r} mixes .diff layers with other tensors (e.g. {other[0]!r}); split it")
    ours, shapes = {}, {}
    for key, value in tensors.items():
        module = key[: -len(SUFFIX)]
        if module.startswith(KOHYA_PREFIX):
            module = module_from_kohya(module[len(KOHYA_PREFIX) :], base, path)
        shape = tuple(value.shape)
        if len(shape) not in (2, 4):
            raise ValueError(f"adapter {path.name!r}: {key} has shape {shape}; a Linear/Conv2d update is 2-D or 4-D")
        if base is not None:
            base.check_shape(path, module, shape)
        shapes[module] = shape
        ours[f"{module}.D"] = value.float().reshape(weight_shape_2d(shape))
    base_id = (base.model_id if base is not None else None) or export_info(metadata).get("base_model_id")
    return Adapter(new_header(path, "dense", DenseConfig(), ours, shapes, "dense", base_id), ours)
