"""PEFT folders (``adapter_config.json`` + ``adapter_model.safetensors``): LoRA, OFT, BOFT (one factor) and LoKr.

Conventions as checked against peft 0.21.2 (see ``studio/adapters/peft_interop.py`` for LoRA and OFT):

* **BOFT** (``boft_n_butterfly_factor = 1``): PEFT stores the full skew blocks ``boft_R (1, r, b, b)`` and builds
  ``Cayley(-S)``, so ``boft_R = -s·Q``; its ``boft_s`` (``(d_out, 1)``, ``(1, d_out)`` for convs) scales the
  outputs before the bias, as our ``m(s)`` does. PEFT's BOFT has no Neumann series and its CPU path has one factor.
* **LoKr** coincides with ours (same factor sizes, the same rule for low-rank ``w2``/``w1``, ``alpha / r``);
  a conv's full ``w2`` is 4-D ``(b1, n, kh, kw)`` there. Strength is written into ``alpha``.

Tensors are keyed ``base_model.model.<module>.<param>``; module names are the base UNet's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from studio.adapters.base import DEFAULT_BLOCK_SIZE
from studio.adapters.boft import BOFTConfig
from studio.adapters.formats.common import Adapter, BaseLayers, Host, lora_adapter, new_header, uniform_strength
from studio.adapters.kron import LoKrConfig
from studio.adapters.maths import skew_from_triu
from studio.adapters.oft import OFTConfig
from studio.adapters.peft_interop import (
    CONFIG_NAME,
    PEFT_VERIFIED_VERSION,
    WEIGHTS_NAME,
    peft_lora_files,
    peft_oft_files,
)

PREFIX = "base_model.model."
METHODS = ("lora", "oft", "boft", "lokr")


def detect(path: Path, keys: set[str]) -> bool:
    return path.is_dir() and (path / CONFIG_NAME).is_file()


def files(adapter: Adapter, host: Host, path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The ``adapter_config.json`` contents and tensors for the adapter on ``host``.

    Raises:
        ValueError: for what PEFT cannot hold exactly (per-layer strengths, OFT on k×k convs, BOFT with several
            factors or the Neumann series, LoKr with explicit factor sizes).
    """
    base_id = adapter.header.get("base_model_id")
    if adapter.method == "lora":
        return peft_lora_files(host.model, host.name, base_id)
    if adapter.method == "oft":
        return peft_oft_files(host.model, host.name, base_id)
    strength = uniform_strength(host, path, "PEFT")
    config = next(host.items())[2].config
    common = {
        "task_type": None,
        "peft_version": PEFT_VERIFIED_VERSION,
        "base_model_name_or_path": base_id,
        "target_modules": sorted(host.layers()),
        "inference_mode": True,
    }
    if adapter.method == "boft":
        return _boft(host, config, strength, common, path)
    return _lokr(host, config, strength, common, path)


def _boft(host: Host, config: BOFTConfig, strength: float, common: dict, path: Path) -> tuple[dict, dict]:
    if config.factors != 1 or config.cayley != "exact":
        raise ValueError(
            f"adapter {path.name!r} is BOFT with factors={config.factors}, cayley={config.cayley!r}; PEFT "
            f"{PEFT_VERIFIED_VERSION} matches only factors=1 with the exact Cayley map; export --format dense"
        )
    tensors = {}
    for target, layer, adapter, _ in host.items():
        skew = skew_from_triu(adapter.q.detach()[0], adapter.block_size)
        tensors[f"{PREFIX}{target}.boft_R"] = (-strength * skew)[None].contiguous()
        magnitude = adapter.output_scale(strength).detach()
        is_conv = isinstance(layer.base_layer, nn.Conv2d)
        tensors[f"{PREFIX}{target}.boft_s"] = magnitude.reshape((1, -1) if is_conv else (-1, 1)).contiguous()
    peft_config = {
        "peft_type": "BOFT",
        **common,
        "boft_block_size": 0 if config.num_blocks else (config.block_size or DEFAULT_BLOCK_SIZE),
        "boft_block_num": config.num_blocks or 0,
        "boft_n_butterfly_factor": 1,
        "boft_dropout": 0.0,
        "fan_in_fan_out": False,
        "bias": "none",
        "init_weights": True,
    }
    return peft_config, tensors


def _lokr(host: Host, config: LoKrConfig, strength: float, common: dict, path: Path) -> tuple[dict, dict]:
    if config.a1 is not None:
        raise ValueError(
            f"adapter {path.name!r} is LoKr with explicit a1={config.a1}, a2={config.a2}, which PEFT's factor rule "
            "cannot express; export --format lycoris or dense"
        )
    tensors = {}
    for target, layer, adapter, _ in host.items():
        for key, value in adapter.state_dict().items():
            value = value.detach()
            if key == "w2" and isinstance(layer.base_layer, nn.Conv2d):
                value = value.reshape(value.shape[0], -1, *layer.base_layer.kernel_size)
            tensors[f"{PREFIX}{target}.lokr_{key}"] = value.contiguous()
    peft_config = {
        "peft_type": "LOKR",
        **common,
        "r": config.rank,
        "alpha": (config.rank if config.alpha is None else config.alpha) * strength,
        "rank_dropout": 0.0,
        "module_dropout": 0.0,
        "use_effective_conv2d": False,
        "decompose_both": config.decompose_both,
        "decompose_factor": config.factor,
        "rank_dropout_scale": False,
        "init_weights": True,
    }
    return peft_config, tensors


# ---- reading ---------------------------------------------------------------------------------------------------


def read(folder: Path, base: BaseLayers | None) -> Adapter:
    """Our adapter from a PEFT folder (LORA, OFT, BOFT or LOKR).

    Raises:
        ValueError: for other PEFT types and options with no exact counterpart (DoRA, LoRA bias, COFT, Tucker
            LoKr, per-layer LoKr ranks), naming the option.
    """
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not weights_path.is_file():
        raise ValueError(f"PEFT folder {str(folder)!r} has no {WEIGHTS_NAME}; only safetensors weights are read")
    try:
        config = json.loads(config_path.read_text())
        tensors = safetensors.torch.load_file(str(weights_path))
    except Exception as err:
        raise ValueError(f"PEFT folder {str(folder)!r} cannot be read ({type(err).__name__}: {err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"PEFT folder {str(folder)!r}: {CONFIG_NAME} holds no JSON object")
    kind = config.get("peft_type")
    readers = {"LORA": _read_lora, "OFT": _read_oft, "BOFT": _read_boft, "LOKR": _read_lokr}
    if kind not in readers:
        raise ValueError(f"PEFT folder {str(folder)!r} holds a {kind} adapter; mixstudio reads {sorted(readers)}")
    layers = _by_layer(folder, tensors)
    if base is not None:
        missing = sorted(set(layers) - set(base.shapes))
        if missing:
            raise ValueError(
                f"adapter {folder.name!r} targets {missing[0]!r}, which is not a Linear/Conv2d layer of this model; "
                "load it into the model it was trained for"
            )
    base_id = (base.model_id if base is not None else None) or config.get("base_model_name_or_path")
    return readers[kind](folder, config, layers, base, base_id)


def _by_layer(folder: Path, tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    pattern = re.compile(rf"^{re.escape(PREFIX)}(.+)\.([A-Za-z0-9_]+)$")
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        found = pattern.match(key)
        if found is None:
            raise ValueError(f"PEFT folder {str(folder)!r} holds tensor {key!r}, which is not an adapter weight")
        module, param = found.group(1), found.group(2)
        if param == "weight" and module.endswith((".lora_A", ".lora_B", ".oft_R")):  # "<module>.lora_A.weight"
            module, _, head = module.rpartition(".")
            param = f"{head}.{param}"
        layers.setdefault(module, {})[param] = value.float()
    return layers


def _pattern_value(pattern: dict[str, Any], target: str, default: Any) -> Any:
    """PEFT's ``rank_pattern`` / ``alpha_pattern`` lookup: a key matching the end of the module name wins."""
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", target):
            return value
    return default


def _refuse_options(folder: Path, config: dict[str, Any], options: tuple[str, ...]) -> None:
    used = [key for key in options if config.get(key)]
    if used:
        raise ValueError(f"PEFT folder {str(folder)!r} uses {used}, which mixstudio cannot apply exactly")


def _read_lora(folder: Path, config: dict, layers: dict, base: BaseLayers | None, base_id: str | None) -> Adapter:
    _refuse_options(folder, config, ("use_dora", "lora_bias", "fan_in_fan_out"))
    parts, shapes = {}, {}
    for target, params in layers.items():
        if set(params) != {"lora_A.weight", "lora_B.weight"}:
            raise ValueError(f"PEFT LoRA tensors for {target!r} are {sorted(params)}, not lora_A/lora_B weights")
        a, b = params["lora_A.weight"], params["lora_B.weight"]
        rank = a.shape[0]
        alpha = float(_pattern_value(config.get("alpha_pattern"), target, config.get("lora_alpha", rank)))
        scaling = alpha / (rank**0.5 if config.get("use_rslora") else rank)
        shape = (b.shape[0], *a.shape[1:]) if a.dim() == 4 else (b.shape[0], a.shape[1])
        if base is not None:
            shape = base.shapes[target]
        parts[target] = (a.reshape(rank, -1), b.reshape(b.shape[0], rank), scaling)
        shapes[target] = shape
    return lora_adapter(folder, parts, shapes, "peft", base_id)


def _blocks_of(count: int) -> int:
    """The block size ``b`` with ``b (b - 1) / 2 = count``."""
    size = round((1 + (1 + 8 * count) ** 0.5) / 2)
    if size * (size - 1) // 2 != count:
        raise ValueError(f"{count} is not the number of free entries of a skew block")
    return size


def _read_oft(folder: Path, config: dict, layers: dict, base: BaseLayers | None, base_id: str | None) -> Adapter:
    _refuse_options(folder, config, ("coft", "fan_in_fan_out"))
    terms = int(config.get("num_cayley_neumann_terms", 5))
    neumann = bool(config.get("use_cayley_neumann"))
    if neumann and terms < 2:
        raise ValueError(f"PEFT folder {str(folder)!r}: num_cayley_neumann_terms={terms} has no counterpart; use >= 2")
    if base is None:
        raise ValueError(
            f"PEFT OFT folder {folder.name!r} does not say which layers are k×k convs (where PEFT's OFT differs from "
            "ours); pass --base MODEL"
        )
    tensors, shapes, size = {}, {}, None
    for target, params in layers.items():
        shape = base.shapes[target]
        if len(shape) == 4 and tuple(shape[2:]) != (1, 1):
            raise ValueError(
                f"PEFT folder {folder.name!r} rotates the {tuple(shape[2:])} conv {target!r}; PEFT's k×k conv OFT "
                "folds rotated patches and has no exact counterpart here"
            )
        q = params.get("oft_R.weight")
        if q is None or len(params) != 1:
            raise ValueError(f"PEFT OFT tensors for {target!r} are {sorted(params)}, not one oft_R weight")
        size = _blocks_of(q.shape[1])
        # PEFT's exact solve builds Cayley(-Q); its Neumann series is the same polynomial in Q as ours.
        tensors[f"{target}.q"] = (q if neumann else -q).contiguous()
        shapes[target] = shape
    ours = OFTConfig(
        block_size=size,
        cayley="neumann" if neumann else "exact",
        neumann_terms=terms - 1 if neumann else 4,
        block_share=bool(config.get("block_share")),
    )
    return Adapter(new_header(folder, "oft", ours, tensors, shapes, "peft", base_id), tensors)


def _read_boft(folder: Path, config: dict, layers: dict, base: BaseLayers | None, base_id: str | None) -> Adapter:
    _refuse_options(folder, config, ("fan_in_fan_out",))
    if int(config.get("boft_n_butterfly_factor", 1)) != 1:
        raise ValueError(
            f"PEFT folder {str(folder)!r} has boft_n_butterfly_factor={config['boft_n_butterfly_factor']}; PEFT's "
            "butterfly permutation differs from ours beyond one factor, so only 1 is read"
        )
    tensors, shapes, size = {}, {}, None
    for target, params in layers.items():
        if set(params) != {"boft_R", "boft_s"}:
            raise ValueError(f"PEFT BOFT tensors for {target!r} are {sorted(params)}, not boft_R and boft_s")
        blocks, scale = params["boft_R"], params["boft_s"]
        size = blocks.shape[-1]
        skew = -0.5 * (blocks[0] - blocks[0].transpose(-1, -2))  # PEFT skew-symmetrises, then builds Cayley(-S)
        rows, cols = torch.triu_indices(size, size, 1)
        tensors[f"{target}.q"] = skew[:, rows, cols][None].contiguous()
        tensors[f"{target}.magnitude"] = scale.reshape(-1).contiguous()
        shapes[target] = base.shapes[target] if base is not None else ()
    ours = BOFTConfig(block_size=size, factors=1)
    return Adapter(new_header(folder, "boft", ours, tensors, shapes, "peft", base_id), tensors)


def _read_lokr(folder: Path, config: dict, layers: dict, base: BaseLayers | None, base_id: str | None) -> Adapter:
    _refuse_options(folder, config, ("rank_pattern", "alpha_pattern"))
    if any("lokr_t2" in params for params in layers.values()):
        raise ValueError(f"PEFT folder {str(folder)!r} uses effective (Tucker) conv LoKr (lokr_t2); not supported")
    tensors, shapes = {}, {}
    for target, params in layers.items():
        for key, value in params.items():
            name = key.removeprefix("lokr_")
            tensors[f"{target}.{name}"] = (value.reshape(value.shape[0], -1) if name == "w2" else value).contiguous()
        w2 = params.get("lokr_w2")
        shapes[target] = base.shapes[target] if base is not None else _lokr_shape(params, w2)
    ours = LoKrConfig(
        rank=int(config.get("r", 8)),
        alpha=float(config.get("alpha", 8)),
        factor=int(config.get("decompose_factor", -1)),
        decompose_both=bool(config.get("decompose_both")),
    )
    return Adapter(new_header(folder, "lokr", ours, tensors, shapes, "peft", base_id), tensors)


def _lokr_shape(params: dict[str, torch.Tensor], w2: torch.Tensor | None) -> tuple[int, ...]:
    """The weight shape when the tensors tell it (a full ``w2``: 2-D Linear, 4-D conv), else ``()`` (unknown)."""
    if w2 is None:
        return ()
    w1 = params.get("lokr_w1")
    a1, a2 = w1.shape if w1 is not None else (params["lokr_w1_a"].shape[0], params["lokr_w1_b"].shape[1])
    return (a1 * w2.shape[0], a2 * w2.shape[1], *w2.shape[2:])
