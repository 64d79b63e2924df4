"""LyCORIS LoKr files (what LyCORIS, A1111 and ComfyUI load): ``lora_unet_<module>.lokr_w1`` / ``lokr_w1_a/b``,
``lokr_w2`` / ``lokr_w2_a/b`` and ``alpha``, with ``ΔW = (alpha / r) · (w1 ⊗ w2)``.

LyCORIS (4.x ``modules/lokr.py``) and ComfyUI take ``r`` from the low-rank pair (``w1_b`` / ``w2_b``); when both
factors are full there is no ``r`` and both ignore ``alpha`` (scale 1). So an adapter whose factors are both full has
its strength and ``alpha / r`` folded into ``w1``; otherwise the factors are written as they are and ``alpha`` carries
``s · alpha``. A conv's full ``w2`` is written 4-D ``(b1, n, kh, kw)`` (LyCORIS's layout) when its columns hold whole
kernel windows, else 2-D (which A1111 and ComfyUI reshape alike). A LoKr whose ``w1`` is low-rank while ``w2`` is full
(LyCORIS cannot load that pair) gets ``w1 = w1_a w1_b`` multiplied out. DiffuseKronA is a LoKr with both factors
full: ``w1 = s · A``, ``w2 = B``.

Reading picks the representation that reproduces the file: our LoKr when one rank, factor rule and low-rank rule
give every layer's tensors; else DiffuseKronA when every layer has the same ``w1`` shape; else a dense update
``(alpha / r) · (w1 ⊗ w2)`` per layer. LoRA files (LyCORIS "LoCon") are the kohya format.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from studio.adapters.base import LayerShape
from studio.adapters.dense import DenseConfig
from studio.adapters.formats.common import (
    KOHYA_PREFIX,
    Adapter,
    BaseLayers,
    Host,
    export_info,
    export_metadata,
    kohya_name,
    module_from_kohya,
    new_header,
    read_safetensors,
    write_file,
)
from studio.adapters.formats.lora_files import refuse_foreign
from studio.adapters.kron import DiffuseKronAConfig, LoKrAdapter, LoKrConfig

PARAMS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "alpha")


def detect(path: Path, keys: set[str]) -> bool:
    return any(".lokr_w" in key for key in keys)


# ---- export ----------------------------------------------------------------------------------------------------


def _w2_out(w2: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """A conv's full ``w2`` as ``(b1, n, kh, kw)`` when its ``b2`` columns hold whole kernel windows."""
    weight = layer.base_layer.weight
    windows = math.prod(weight.shape[2:])
    if weight.dim() == 4 and w2.shape[1] % windows == 0:
        return w2.reshape(w2.shape[0], -1, *weight.shape[2:])
    return w2


def export(adapter: Adapter, host: Host, out: Path, force: bool) -> Path:
    tensors = {}
    for target, layer, kron, scale in host.items():
        name = kohya_name(target)
        params = {key: value.detach() for key, value in kron.state_dict().items()}
        if adapter.method == "diffusekrona":
            params, scaling, rank = {"w1": params["A"], "w2": params["B"]}, scale, 1
        else:
            scaling, rank = scale * kron.scaling, kron.config.rank
        if "w2" in params and "w1" not in params:  # LyCORIS loads a low-rank w1 only beside a low-rank w2
            params["w1"] = params.pop("w1_a") @ params.pop("w1_b")
        if "w1" in params and "w2" in params:  # no rank: readers ignore alpha, so the scale goes into w1
            tensors[f"{name}.lokr_w1"] = scaling * params["w1"]
            tensors[f"{name}.lokr_w2"] = _w2_out(params["w2"], layer)
            tensors[f"{name}.alpha"] = torch.tensor(float(rank))
            continue
        for key, value in params.items():
            tensors[f"{name}.lokr_{key}"] = value
        tensors[f"{name}.alpha"] = torch.tensor(scaling * rank)
    return write_file(out, tensors, export_metadata(adapter, "lycoris"), force)


# ---- read ------------------------------------------------------------------------------------------------------


class _Layer:
    """One file layer: its factors (low-rank pairs kept), the update's scaling and what is known of the weight."""

    def __init__(self, params: dict[str, torch.Tensor]) -> None:
        self.params = {k.removeprefix("lokr_"): v.float() for k, v in params.items() if k != "alpha"}
        if "w2" in self.params:
            self.kernel = tuple(self.params["w2"].shape[2:])
            self.params["w2"] = self.params["w2"].reshape(self.params["w2"].shape[0], -1)
        else:
            self.kernel = None
            self.params["w2_b"] = self.params["w2_b"].reshape(self.params["w2_b"].shape[0], -1)
        low = self.params.get("w1_a", self.params.get("w2_a"))
        self.rank = None if low is None else low.shape[1]
        alpha = params.get("alpha")
        self.scaling = 1.0 if self.rank is None else (self.rank if alpha is None else float(alpha)) / self.rank

    def full(self, name: str) -> torch.Tensor:
        return self.params[name] if name in self.params else self.params[f"{name}_a"] @ self.params[f"{name}_b"]

    def weight_2d(self) -> tuple[int, int]:
        w1, w2 = self.full("w1"), self.full("w2")
        return w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1]


def read(path: Path, base: BaseLayers | None) -> Adapter:
    tensors, metadata = read_safetensors(path)
    refuse_foreign(path, set(tensors))
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, _, param = key.partition(".")
        prefix = next((p for p in (KOHYA_PREFIX, "lycoris_") if name.startswith(p)), None)
        if prefix is None or param not in PARAMS:
            what = "LoRA/LoCon" if param.startswith("lora_") else "other"
            raise ValueError(f"adapter {path.name!r} holds {key!r} ({what}) beside LoKr layers; split the file")
        groups.setdefault(module_from_kohya(name[len(prefix) :], base, path), {})[param] = value
    layers = {}
    for target, params in groups.items():
        if not ({"lokr_w1", "lokr_w1_a"} & set(params) and {"lokr_w2", "lokr_w2_a"} & set(params)):
            raise ValueError(f"adapter {path.name!r}: layer {target!r} lacks a lokr_w1 or lokr_w2 factor")
        layers[target] = _Layer(params)
    shapes = {target: _weight_shape(path, target, layer, base) for target, layer in layers.items()}
    base_id = (base.model_id if base is not None else None) or export_info(metadata).get("base_model_id")
    prefer_kron = export_info(metadata).get("method") == "diffusekrona"
    attempts = (_as_diffusekrona, _as_lokr) if prefer_kron else (_as_lokr, _as_diffusekrona)
    for attempt in attempts:
        found = attempt(layers, shapes)
        if found is not None:
            method, config, ours = found
            return Adapter(new_header(path, method, config, ours, shapes, "lycoris", base_id), ours)
    ours = {f"{t}.D": layer.scaling * torch.kron(layer.full("w1"), layer.full("w2")) for t, layer in layers.items()}
    return Adapter(new_header(path, "dense", DenseConfig(), ours, shapes, "lycoris", base_id), ours)


def _weight_shape(path: Path, target: str, layer: _Layer, base: BaseLayers | None) -> tuple[int, ...]:
    """The layer's weight shape from the base model, else from a 4-D ``w2`` or a 2-D one; ``()`` if unknown."""
    d_out, d_in = layer.weight_2d()
    if base is not None:
        base.check_shape(path, target, base.shapes.get(target, (d_out, d_in)))  # refuses a layer the model lacks
        shape = base.shapes[target]
        if (shape[0], math.prod(shape[1:])) != (d_out, d_in):
            raise ValueError(
                f"adapter {path.name!r}: layer {target!r} has weight shape {tuple(shape)} in this model but the "
                f"file's factors make a ({d_out}, {d_in}) update; the adapter was trained for a different architecture"
            )
        return shape
    if layer.kernel:
        return (d_out, d_in // math.prod(layer.kernel), *layer.kernel)
    return (d_out, d_in) if layer.kernel is not None else ()


def _layer_shape(shape: tuple[int, ...]) -> LayerShape:
    kernel = math.prod(shape[2:]) if len(shape) == 4 else 1
    return LayerShape(shape[0], math.prod(shape[1:]), shape[1], kernel)


def _as_lokr(layers: dict[str, _Layer], shapes: dict) -> tuple[str, LoKrConfig, dict] | None:
    """Our LoKr when one rank, factor and low-rank rule rebuild every layer's tensors (``None`` otherwise)."""
    if not all(shapes.values()):
        return None
    ranks = {layer.rank for layer in layers.values() if layer.rank is not None}
    if len(ranks) > 1:
        return None
    widest = max(max(*layer.full("w1").shape, *layer.full("w2").shape) for layer in layers.values())
    rank = ranks.pop() if ranks else widest
    both = any("w1_a" in layer.params for layer in layers.values())
    factors = [-1, *sorted({n for layer in layers.values() for n in layer.full("w1").shape})]
    for factor in factors:
        config = LoKrConfig(rank=rank, factor=factor, decompose_both=both)
        if all(_fits(config, shapes[t], layer) for t, layer in layers.items()):
            break
    else:
        return None
    scalings = {layer.scaling for layer in layers.values()}
    uniform = len(scalings) == 1
    if uniform:
        config = LoKrConfig(rank=rank, alpha=scalings.pop() * rank, factor=factor, decompose_both=both)
    ours = {}
    for target, layer in layers.items():
        for key, value in layer.params.items():
            fold = not uniform and key in ("w1", "w1_a")
            ours[f"{target}.{key}"] = (layer.scaling * value if fold else value).contiguous()
    return "lokr", config, ours


def _fits(config: LoKrConfig, shape: tuple[int, ...], layer: _Layer) -> bool:
    expected = LoKrAdapter(config, _layer_shape(shape), generator=torch.Generator()).state_dict()
    return {k: tuple(v.shape) for k, v in expected.items()} == {k: tuple(v.shape) for k, v in layer.params.items()}


def _as_diffusekrona(layers: dict[str, _Layer], shapes: dict) -> tuple[str, DiffuseKronAConfig, dict] | None:
    """DiffuseKronA when every layer's ``w1`` has one shape: ``A = (alpha / r) · w1``, ``B = w2``."""
    sizes = {tuple(layer.full("w1").shape) for layer in layers.values()}
    if len(sizes) != 1:
        return None
    a1, a2 = sizes.pop()
    ours = {}
    for target, layer in layers.items():
        ours[f"{target}.A"] = (layer.scaling * layer.full("w1")).contiguous()
        ours[f"{target}.B"] = layer.full("w2").contiguous()
    return "diffusekrona", DiffuseKronAConfig(a1=a1, a2=a2), ours
