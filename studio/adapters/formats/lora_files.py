"""Single-file LoRA formats: kohya/A1111/ComfyUI (``lora_unet_*``) and diffusers (``unet.*.lora_A.weight``).

* **kohya** (sd-scripts ``networks/lora.py``, what A1111 and ComfyUI load, and LyCORIS's LoCon): per layer
  ``lora_unet_<module with _>.lora_down.weight`` (our ``A``; ``(r, C_in, kh, kw)`` for convs),
  ``.lora_up.weight`` (our ``B``; ``(d_out, r, 1, 1)``) and ``.alpha``; the update is ``(alpha / r) · up · down``.
  Our strength goes into ``alpha`` per layer, so a per-layer strength survives. Names are the diffusers module
  paths (diffusers-style kohya names, which diffusers' converter and ComfyUI map onto diffusers UNets); the
  LDM-style names kohya writes for SD checkpoints (``input_blocks_4_1_...``) are refused.
* **diffusers** (what ``pipe.load_lora_weights`` reads natively): ``unet.<module>.lora_A.weight`` /
  ``.lora_B.weight`` in ``pytorch_lora_weights.safetensors``. diffusers reads no per-layer alpha from such keys and
  other readers (ComfyUI) ignore its ``lora_adapter_metadata``, so ``s · alpha / r`` is folded into ``lora_B``
  and the metadata says ``lora_alpha = r``: every reader applies the same update.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from studio.adapters.formats.common import (
    KOHYA_PREFIX,
    Adapter,
    BaseLayers,
    Host,
    export_info,
    export_metadata,
    kohya_name,
    lora_adapter,
    module_from_kohya,
    read_safetensors,
    write_file,
)

DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
DIFFUSERS_METADATA = "lora_adapter_metadata"
_FOREIGN = {
    ".lora_mid.weight": "LoCon with a Tucker core (lora_mid)",
    ".dora_scale": "DoRA (dora_scale)",
    ".hada_w1_a": "LoHa (hada_*)",
    ".oft_blocks": "kohya/LyCORIS OFT (oft_blocks), which rotates the output side",
    ".oft_diag": "LyCORIS diag-OFT (oft_diag), which rotates the output side",
    ".lora_magnitude_vector.weight": "DoRA (lora_magnitude_vector)",
}


def detect_kohya(path: Path, keys: set[str]) -> bool:
    return any(key.endswith(".lora_down.weight") for key in keys)


def detect_diffusers(path: Path, keys: set[str]) -> bool:
    return any(key.startswith(("unet.", "text_encoder.", "text_encoder_2.")) for key in keys)


def refuse_foreign(path: Path, keys: set[str]) -> None:
    """Refuse tensors of methods and modules mixstudio cannot apply (text encoders, LoHa, DoRA, Tucker, ...)."""
    text = sorted(k for k in keys if k.startswith(("lora_te", "text_encoder")))
    if text:
        raise ValueError(
            f"adapter {path.name!r} also adapts the text encoder ({len(text)} tensors, e.g. {text[0]!r}); mixstudio "
            "applies UNet adapters only, so it cannot reproduce this file; use a UNet-only export"
        )
    for suffix, what in _FOREIGN.items():
        found = sorted(k for k in keys if k.endswith(suffix))
        if found:
            raise ValueError(
                f"adapter {path.name!r} holds {what} layers (e.g. {found[0]!r}); mixstudio cannot apply them"
            )


def _factors(layer: nn.Module, adapter: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``A`` and ``B`` in the layer's layout: ``(r, C_in, kh, kw)`` / ``(d_out, r, 1, 1)`` for convs."""
    a, b = adapter.A.detach(), adapter.B.detach()
    weight = layer.base_layer.weight
    if weight.dim() == 4:
        a, b = a.reshape(a.shape[0], *weight.shape[1:]), b.reshape(*b.shape, 1, 1)
    return a, b


def export_kohya(adapter: Adapter, host: Host, out: Path, force: bool) -> Path:
    tensors = {}
    for target, layer, lora, scale in host.items():
        a, b = _factors(layer, lora)
        name = kohya_name(target)
        tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"] = a, b
        tensors[f"{name}.alpha"] = torch.tensor(lora.scaling * a.shape[0] * scale)
    config = adapter.header["config"]
    extra = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(config["rank"]),
        "ss_network_alpha": str(config["alpha"] if config["alpha"] is not None else config["rank"]),
    }
    return write_file(out, tensors, export_metadata(adapter, "kohya", extra), force)


def read_kohya(path: Path, base: BaseLayers | None) -> Adapter:
    tensors, metadata = read_safetensors(path)
    refuse_foreign(path, set(tensors))
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, _, param = key.partition(".")
        if not name.startswith(KOHYA_PREFIX) or param not in ("lora_down.weight", "lora_up.weight", "alpha"):
            raise ValueError(f"adapter {path.name!r} holds {key!r}, which is not a kohya UNet LoRA tensor")
        groups.setdefault(name[len(KOHYA_PREFIX) :], {})[param] = value.float()
    parts, shapes = {}, {}
    for name, params in groups.items():
        target = module_from_kohya(name, base, path)
        if "lora_down.weight" not in params or "lora_up.weight" not in params:
            raise ValueError(f"adapter {path.name!r}: {KOHYA_PREFIX}{name} lacks lora_down or lora_up")
        down, up = params["lora_down.weight"], params["lora_up.weight"]
        rank = down.shape[0]
        alpha = float(params["alpha"]) if "alpha" in params else float(rank)  # kohya: no alpha means alpha = rank
        shape = (up.shape[0], *down.shape[1:])
        if base is not None:
            base.check_shape(path, target, shape)
        parts[target] = (down.reshape(rank, -1), up.reshape(up.shape[0], rank), alpha / rank)
        shapes[target] = shape
    base_id = (base.model_id if base is not None else None) or export_info(metadata).get("base_model_id")
    return lora_adapter(path, parts, shapes, "kohya", base_id)


def diffusers_tensors(host: Host) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``unet.<module>.lora_A/B.weight`` with ``s · alpha / r`` folded into ``lora_B``, and diffusers' metadata."""
    tensors = {}
    for target, layer, lora, scale in host.items():
        a, b = _factors(layer, lora)
        tensors[f"unet.{target}.lora_A.weight"] = a
        tensors[f"unet.{target}.lora_B.weight"] = (lora.scaling * scale) * b
    rank = next(host.items())[2].A.shape[0]
    meta = {"unet.r": rank, "unet.lora_alpha": rank, "unet.target_modules": sorted(host.layers())}
    return tensors, {DIFFUSERS_METADATA: json.dumps(meta, indent=2, sort_keys=True), "format": "pt"}


def read_diffusers(path: Path, base: BaseLayers | None) -> Adapter:
    file = path / DIFFUSERS_WEIGHTS if path.is_dir() else path
    tensors, metadata = read_safetensors(file)
    refuse_foreign(path, set(tensors))
    config = _diffusers_config(path, metadata)
    parts, shapes, groups = {}, {}, {}
    for key, value in tensors.items():
        for param in ("lora_A.weight", "lora_B.weight"):
            if key.startswith("unet.") and key.endswith("." + param):
                groups.setdefault(key[len("unet.") : -len(param) - 1], {})[param] = value.float()
                break
        else:
            raise ValueError(
                f"adapter {path.name!r} holds {key!r}, which is not a diffusers UNet LoRA weight "
                "(unet.<module>.lora_A/lora_B.weight); older diffusers layouts are not read"
            )
    for target, params in groups.items():
        if len(params) != 2:
            raise ValueError(f"adapter {path.name!r}: unet.{target} lacks lora_A or lora_B")
        a, b = params["lora_A.weight"], params["lora_B.weight"]
        rank = a.shape[0]
        alpha = _pattern(config.get("alpha_pattern"), target, config.get("lora_alpha", rank))
        scaling = float(alpha) / (math.sqrt(rank) if config.get("use_rslora") else rank)
        shape = (b.shape[0], *a.shape[1:])
        if base is not None:
            base.check_shape(path, target, shape)
        parts[target] = (a.reshape(rank, -1), b.reshape(b.shape[0], rank), scaling)
        shapes[target] = shape
    base_id = (base.model_id if base is not None else None) or export_info(metadata).get("base_model_id")
    return lora_adapter(path, parts, shapes, "diffusers", base_id)


def _diffusers_config(path: Path, metadata: dict[str, str]) -> dict:
    """The UNet's LoraConfig keys from ``lora_adapter_metadata`` (``{}`` without it: alpha = rank everywhere)."""
    try:
        raw = json.loads(metadata.get(DIFFUSERS_METADATA, "{}"))
    except json.JSONDecodeError:
        raise ValueError(f"adapter {path.name!r} has {DIFFUSERS_METADATA} that is not valid JSON") from None
    config = {k.removeprefix("unet."): v for k, v in raw.items() if k.startswith("unet.")}
    used = [k for k in ("use_dora", "lora_bias", "fan_in_fan_out") if config.get(k)]
    if used:
        raise ValueError(f"adapter {path.name!r} uses {used}, which mixstudio cannot apply exactly")
    return config


def _pattern(pattern: dict | None, target: str, default: float) -> float:
    import re

    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", target):
            return value
    return default
