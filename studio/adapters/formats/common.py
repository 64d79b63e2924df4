"""What the format converters share: the in-memory adapter, the base model's layers, kohya names, and writers.

Every converter maps between a foreign file and :class:`Adapter` (our header and ``"<target>.<param>"`` tensors, as
``studio.adapters.io.save_adapter`` writes them); exporters read the adapter injected into a *host* model (the base
UNet, or a weightless skeleton of the targeted layers when the header records their shapes), so the maths of each
method (``delta_weight``, ``merge_weight``) is the one the studio runs.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from studio.adapters.inject import adapter_layers, delete_adapter, layers_with
from studio.adapters.io import FORMAT_VERSION, HEADER_KEY, apply_adapter
from studio.adapters.layer import AdapterLayer
from studio.adapters.lora import LoRAConfig
from studio.adapters.registry import config_to_dict
from studio.io import atomic_write_bytes

#: The prefix A1111, ComfyUI, kohya sd-scripts and LyCORIS give UNet layers (``lora_unet_<module path with _>``).
KOHYA_PREFIX = "lora_unet_"
#: The safetensors metadata key our exports carry: the format and the source adapter's method, config and base.
EXPORT_KEY = "mixstudio_export"
#: Name components of diffusers UNets that hold an underscore, for reading kohya names without the base model.
_COMPOUND = {
    "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "time_embedding", "time_emb_proj", "conv_shortcut",
    "conv_in", "conv_out", "conv_norm_out", "proj_in", "proj_out", "to_q", "to_k", "to_v", "to_out", "linear_1",
    "linear_2", "add_embedding", "class_embedding", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
    "encoder_hid_proj", "norm_out", "proj_attn", "time_proj",
}  # fmt: skip
_LDM_WORDS = ("input_blocks", "output_blocks", "middle_block")


@dataclass
class Adapter:
    """One adapter in our layout, in memory: the header ``save_adapter`` writes, and the tensors."""

    header: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def method(self) -> str:
        return self.header["method"]


@dataclass
class BaseLayers:
    """The adaptable layers of a base model: dotted name → weight shape (and the model, when one was loaded)."""

    shapes: dict[str, tuple[int, ...]]
    model: nn.Module | None = None
    model_id: str | None = None
    _by_kohya: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, model: nn.Module, model_id: str | None = None) -> BaseLayers:
        shapes = {}
        for name, module in model.named_modules():
            if isinstance(module, AdapterLayer):
                shapes[name] = tuple(module.base_layer.weight.shape)
            elif isinstance(module, nn.Linear | nn.Conv2d) and ".base_layer" not in f".{name}":
                shapes[name] = tuple(module.weight.shape)
        return cls(shapes, model, model_id)

    def module_for_kohya(self, kohya_name: str, source: Path) -> str:
        """The dotted module whose name, ``.`` written ``_``, is ``kohya_name`` (without the prefix)."""
        if not self._by_kohya:
            for name in self.shapes:
                self._by_kohya.setdefault(name.replace(".", "_"), name)
        if kohya_name not in self._by_kohya:
            raise ValueError(
                f"adapter {source.name!r} targets {KOHYA_PREFIX}{kohya_name}, which names no Linear/Conv2d layer of "
                "this model; load it into the model it was trained for"
            )
        return self._by_kohya[kohya_name]

    def check_shape(self, source: Path, target: str, shape: tuple[int, ...]) -> None:
        """Refuse a layer the base model lacks or whose weight has another shape."""
        if target not in self.shapes:
            raise ValueError(
                f"adapter {source.name!r} targets {target!r}, which is not a Linear/Conv2d layer of this model; load "
                "it into the model it was trained for"
            )
        if tuple(self.shapes[target]) != tuple(shape):
            raise ValueError(
                f"adapter {source.name!r}: layer {target!r} has weight shape {tuple(self.shapes[target])} in this "
                f"model but the file was made for {tuple(shape)}; the adapter was trained for a different architecture"
            )


def load_base_layers(base: str | Path | nn.Module | None) -> BaseLayers | None:
    """The base model's layers from a UNet module, a pipeline, an embedded name or a pipeline/UNet folder.

    Raises:
        ValueError: for a name or folder that holds no loadable UNet (one line).
    """
    if base is None:
        return None
    if isinstance(base, nn.Module):
        return BaseLayers.of(base)
    if hasattr(base, "unet"):
        return BaseLayers.of(base.unet)
    from diffusers import UNet2DConditionModel

    from studio.models.zoo import EMBEDDED, model_dir

    folder = model_dir(str(base)) if str(base) in EMBEDDED else Path(base)
    subfolder = "unet" if (folder / "unet" / "config.json").is_file() else None
    if subfolder is None and not (folder / "config.json").is_file():
        raise ValueError(
            f"--base {str(base)!r} is neither an embedded model nor a folder holding a diffusers UNet (unet/ or "
            f"config.json); pass the model the adapter was trained for"
        )
    try:
        unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder=subfolder)
    except (OSError, ValueError, TypeError, KeyError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise ValueError(f"--base {str(base)!r}: cannot load its UNet ({reason})") from None
    return BaseLayers.of(unet.eval(), str(base))


def module_from_kohya(kohya_name: str, base: BaseLayers | None, source: Path) -> str:
    """The dotted diffusers module of a diffusers-style kohya name (``down_blocks_1_attentions_0_..._to_q``).

    With the base model the name is looked up among its layers (exact); without, underscores become dots except
    inside the name components diffusers UNets use (``down_blocks``, ``to_q``, ``time_emb_proj``, ...).

    Raises:
        ValueError: for LDM-style names (``input_blocks_4_1_...``), which only an SD checkpoint converter can map.
    """
    if any(word in kohya_name for word in _LDM_WORDS):
        raise ValueError(
            f"adapter {source.name!r} uses LDM-style kohya names ({KOHYA_PREFIX}{kohya_name}); mixstudio reads the "
            "diffusers-style names (lora_unet_down_blocks_...) only; convert the file to diffusers format first"
        )
    if base is not None:
        return base.module_for_kohya(kohya_name, source)
    tokens, parts, i = kohya_name.split("_"), [], 0
    while i < len(tokens):
        for width in (3, 2, 1):
            word = "_".join(tokens[i : i + width])
            if width == 1 or word in _COMPOUND:
                parts.append(word)
                i += width
                break
    return ".".join(parts)


def kohya_name(module: str) -> str:
    """``lora_unet_`` + the dotted module name with ``_`` for ``.`` (what A1111, ComfyUI and diffusers read)."""
    return KOHYA_PREFIX + module.replace(".", "_")


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a safetensors file, with one-line errors."""
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        return safetensors.torch.load_file(str(path)), metadata
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"adapter file {str(path)!r} is not a readable safetensors file ({err})") from None


def export_info(metadata: dict[str, str]) -> dict[str, Any]:
    """What our own export recorded in a file's metadata (``{}`` for files others wrote)."""
    try:
        info = json.loads(metadata.get(EXPORT_KEY, "{}"))
    except json.JSONDecodeError:
        return {}
    return info if isinstance(info, dict) else {}


def new_header(
    source: Path,
    method: str,
    config: Any,
    tensors: dict[str, torch.Tensor],
    shapes: dict[str, tuple[int, ...]],
    fmt: str,
    base_model_id: str | None,
) -> dict[str, Any]:
    """Our header for an adapter read from ``source`` (targets in model order of the tensors, strength 1)."""
    import studio

    targets = sorted(shapes)
    return {
        "format": FORMAT_VERSION,
        "name": re.sub(r"[^A-Za-z0-9_-]", "-", source.stem if source.is_file() else source.name) or "imported",
        "method": method,
        "config": config_to_dict(config),
        "targets": targets,
        "base_model_id": base_model_id,
        "library_version": str(getattr(studio, "__version__", "0")),
        "scale": 1.0,
        "layer_shapes": {t: list(shapes[t]) for t in targets if shapes[t]},
        "imported_from": fmt,
    }


def lora_adapter(
    source: Path,
    layers: dict[str, tuple[torch.Tensor, torch.Tensor, float]],
    shapes: dict[str, tuple[int, ...]],
    fmt: str,
    base_model_id: str | None,
) -> Adapter:
    """Our LoRA from per-layer ``(A (r, d_in), B (d_out, r), scaling)`` with ``ΔW = scaling · B A``.

    One rank and one ``alpha / r`` for every layer keep the tensors as they are (a round trip is bit-exact).
    Otherwise every layer is padded with zero rows/columns to the largest rank (zeros add exact zeros) and its own
    scaling is folded into ``B``, with ``alpha = rank`` (scaling 1): exact to one float rounding per entry.
    """
    ranks = {a.shape[0] for a, _, _ in layers.values()}
    scalings = {scaling for _, _, scaling in layers.values()}
    rank = max(ranks)
    uniform = len(ranks) == 1 and len(scalings) == 1
    config = LoRAConfig(rank=rank, alpha=next(iter(scalings)) * rank if uniform else None)
    if uniform and config.alpha == rank:
        config = LoRAConfig(rank=rank)
    tensors = {}
    for target, (a, b, scaling) in layers.items():
        a, b = a.float(), b.float()
        if not uniform:
            pad = rank - a.shape[0]
            a = torch.cat([a, a.new_zeros(pad, a.shape[1])])
            b = torch.cat([b * scaling, b.new_zeros(b.shape[0], pad)], dim=1)
        tensors[f"{target}.A"], tensors[f"{target}.B"] = a.contiguous(), b.contiguous()
    return Adapter(new_header(source, "lora", config, tensors, shapes, fmt, base_model_id), tensors)


def weight_shape_2d(shape: tuple[int, ...]) -> tuple[int, int]:
    return shape[0], math.prod(shape[1:])


# ---- hosts: a model holding the adapter, for the exporters ---------------------------------------------------------


def skeleton(shapes: dict[str, tuple[int, ...]]) -> nn.Module:
    """A module tree with a weightless ``nn.Linear``/``nn.Conv2d`` at each dotted name (weights are stride-0 zeros)."""
    root = nn.Module()
    for name, shape in shapes.items():
        parent = root
        *path, leaf = name.split(".")
        for part in path:
            if part not in parent._modules:
                parent.add_module(part, nn.Module())
            parent = parent._modules[part]
        if len(shape) == 2:
            layer = nn.Linear(shape[1], shape[0], bias=False, device="meta")
        else:
            layer = nn.Conv2d(shape[1], shape[0], tuple(shape[2:]), bias=False, device="meta")
        layer.weight = nn.Parameter(torch.zeros(()).expand(*shape), requires_grad=False)
        parent.add_module(leaf, layer)
    return root


class Host:
    """A model holding the adapter as ``name``: :meth:`layers` gives its ``AdapterLayer`` per target."""

    name = "export"

    def __init__(self, model: nn.Module, real: bool, owned: bool) -> None:
        self.model, self.real, self.owned = model, real, owned

    def layers(self) -> dict[str, AdapterLayer]:
        return layers_with(self.model, self.name)

    def items(self) -> Iterator[tuple[str, AdapterLayer, Any, float]]:
        """``(target, layer, adapter, strength)`` per adapted layer."""
        for target, layer in self.layers().items():
            yield target, layer, layer.adapters[self.name], layer.scales[self.name]

    def close(self) -> None:
        if not self.owned and self.name in {
            a for layer in adapter_layers(self.model).values() for a in layer.adapters
        }:
            delete_adapter(self.model, self.name)


def make_host(adapter: Adapter, path: Path, base: BaseLayers | None, need_weights: bool) -> Host:
    """The adapter injected into the base model, or into a skeleton when its shapes are known and weights are not
    needed.

    Raises:
        ValueError: when neither the base model nor the header's layer shapes are at hand (naming ``--base``).
    """
    shapes = adapter.header.get("layer_shapes") or {}
    targets = adapter.header["targets"]
    if base is None and (need_weights or not all(t in shapes for t in targets)):
        why = "the base weights (W' - W)" if need_weights else "the layers' shapes (the file predates layer_shapes)"
        raise ValueError(
            f"exporting {path.name!r} ({adapter.method}) needs {why}; pass --base MODEL (base_model=...), the model "
            "it was trained on"
        )
    if base is not None and base.model is not None:
        host = Host(base.model, real=True, owned=base.model_id is not None)
    else:
        host = Host(skeleton({t: tuple(shapes[t]) for t in targets}), real=False, owned=True)
    apply_adapter(host.model, path, adapter.header, adapter.tensors, name=Host.name)
    return host


def uniform_strength(host: Host, path: Path, fmt: str) -> float:
    """The one strength every layer has; formats without per-layer strength refuse anything else."""
    scales = {scale for *_, scale in host.items()}
    if len(scales) != 1:
        raise ValueError(
            f"adapter {path.name!r} has different strengths per layer ({sorted(scales)}) and {fmt} keeps one; re-save "
            "it at one strength, or export --format dense"
        )
    return scales.pop()


def flat_weight(layer: AdapterLayer) -> torch.Tensor:
    return layer.base_layer.weight.detach().reshape(layer.shape.d_out, layer.shape.d_in)


def write_file(out: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], force: bool) -> Path:
    """Write one ``.safetensors`` file atomically; an existing file is replaced only if we exported it, or ``force``.

    Raises:
        ValueError: for an ``out`` that is not a ``.safetensors`` path, a folder, or a file someone else wrote.
    """
    if out.suffix != ".safetensors":
        raise ValueError(
            f"--out {str(out)!r} must be a .safetensors file path for this format, e.g. style.safetensors"
        )
    if out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a folder; this format writes one .safetensors file")
    if out.exists() and not force:
        ours = False
        try:
            with safetensors.safe_open(str(out), framework="pt") as handle:
                meta = handle.metadata() or {}
            ours = EXPORT_KEY in meta or HEADER_KEY in meta
        except Exception:
            ours = False
        if not ours:
            raise ValueError(
                f"--out {str(out)!r} exists and mixstudio did not write it; pick a new name or pass --force"
            )
    tensors = {key: value.detach().float().contiguous() for key, value in tensors.items()}
    try:
        atomic_write_bytes(out, safetensors.torch.save(tensors, metadata=metadata))
    except OSError as err:
        raise ValueError(f"--out {str(out)!r} cannot be written ({err.strerror}); choose another path") from None
    return out


def export_metadata(adapter: Adapter, fmt: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Safetensors metadata of an export: ours under :data:`EXPORT_KEY`, plus format-specific keys."""
    info = {
        "format": fmt,
        "method": adapter.method,
        "config": adapter.header["config"],
        "base_model_id": adapter.header.get("base_model_id"),
        "name": adapter.header.get("name"),
    }
    return {EXPORT_KEY: json.dumps(info), **(extra or {})}
