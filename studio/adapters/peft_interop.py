"""Exchange adapters with PEFT folders (``adapter_config.json`` + ``adapter_model.safetensors``).

Conventions checked against peft 0.21.2 (``peft/tuners/{lora,oft}/layer.py``) and tested in
``tests/adapters/test_peft_interop.py``:

* **LoRA** coincides: PEFT's ``lora_A.weight`` / ``lora_B.weight`` are our ``A`` / ``B`` (reshaped to
  ``(r, C_in, kh, kw)`` / ``(C_out, r, 1, 1)`` for convs) and its scaling is ``lora_alpha / r`` (``/ sqrt(r)`` with
  ``use_rslora``). Our strength ``s`` is exported by writing ``lora_alpha = s · alpha``.
* **OFT** coincides on Linear and 1×1 conv layers: PEFT also rotates the input side (``x @ R``, merged
  ``W Rᵀ``) and stores the same strict upper triangles. Two differences need a mapping: PEFT's exact solve computes
  ``(I - Q)(I + Q)^{-1} = Cayley(-Q)`` (we export ``-Q``), and its ``num_cayley_neumann_terms = T`` equals our
  ``neumann_terms = T - 1`` (only ``T >= 4`` has that form). Strength and the COFT projection are baked into the
  exported ``Q`` (exported with ``coft=False``). On k×k convs PEFT 0.21.2 rotates unfolded patches and folds them
  back by summation, which is not the identity at init and differs from its own merge; we refuse those layers.
* BOFT with one butterfly factor and LoKr coincide too; ``studio.adapters.formats.peft`` writes and reads them
  (with LoRA and OFT) from adapter files. BOFT with more factors does not: PEFT's CPU path silently drops to one
  factor and uses another permutation. ETHER and GOFT do not exist in PEFT.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from studio.adapters.base import DEFAULT_BLOCK_SIZE, layer_shape
from studio.adapters.inject import add_adapter, layers_with
from studio.adapters.layer import AdapterLayer
from studio.adapters.lora import LoRAConfig
from studio.adapters.maths import project_frobenius_ball, skew_from_triu
from studio.io import atomic_dir

PEFT_VERIFIED_VERSION = "0.21.2"
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_PREFIX = "base_model.model."


def _uniform_scale(layers: dict[str, AdapterLayer], name: str) -> float:
    scales = {layer.scales[name] for layer in layers.values()}
    if len(scales) != 1:
        raise ValueError(f"adapter {name!r} has different scales per layer ({sorted(scales)}); PEFT has one; set one")
    return scales.pop()


def _method_layers(model: nn.Module, name: str, method: str) -> dict[str, AdapterLayer]:
    layers = layers_with(model, name)
    found = next(iter(layers.values())).adapters[name].config.method
    if found != method:
        raise ValueError(f"adapter {name!r} is {found}, not {method}; only {method} adapters export this way")
    return layers


def _write_folder(folder: str | Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    with atomic_dir(folder, name="folder") as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        safetensors.torch.save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
    return Path(folder)


def export_peft_lora(
    model: nn.Module, name: str, folder: str | Path, *, base_model_name_or_path: str | None = None
) -> Path:
    """Write LoRA adapter ``name`` as a PEFT folder that ``PeftModel.from_pretrained`` loads with equal outputs.

    Returns:
        The folder path.
    """
    return _write_folder(folder, *peft_lora_files(model, name, base_model_name_or_path))


def peft_lora_files(
    model: nn.Module, name: str, base_model_name_or_path: str | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The ``adapter_config.json`` contents and tensors of LoRA adapter ``name`` (see :func:`export_peft_lora`)."""
    layers = _method_layers(model, name, "lora")
    scale = _uniform_scale(layers, name)
    config: LoRAConfig = next(iter(layers.values())).adapters[name].config
    tensors = {}
    for module_name, layer in layers.items():
        adapter, weight = layer.adapters[name], layer.base_layer.weight
        a, b = adapter.A.detach(), adapter.B.detach()
        if weight.dim() == 4:
            a, b = a.reshape(config.rank, *weight.shape[1:]), b.reshape(*b.shape, 1, 1)
        tensors[f"{_PREFIX}{module_name}.lora_A.weight"] = a.contiguous()
        tensors[f"{_PREFIX}{module_name}.lora_B.weight"] = b.contiguous()
    alpha = config.rank if config.alpha is None else config.alpha
    peft_config = {
        "peft_type": "LORA",
        "peft_version": PEFT_VERIFIED_VERSION,
        "task_type": None,
        "base_model_name_or_path": base_model_name_or_path,
        "r": config.rank,
        "lora_alpha": alpha * scale,
        "lora_dropout": 0.0,
        "target_modules": sorted(layers),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }
    return peft_config, tensors


def _read_peft_folder(folder: Path, peft_type: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_path.is_file() or not weights_path.is_file():
        raise ValueError(f"{str(folder)!r} is not a PEFT folder: it needs {CONFIG_NAME} and {WEIGHTS_NAME}")
    config = json.loads(config_path.read_text())
    if config.get("peft_type") != peft_type:
        raise ValueError(f"{str(folder)!r} holds a {config.get('peft_type')} adapter; this importer reads {peft_type}")
    return config, safetensors.torch.load_file(str(weights_path))


def _check_lora_options(folder: Path, config: dict[str, Any]) -> None:
    unsupported = {
        "use_dora": bool(config.get("use_dora")),
        "lora_bias": bool(config.get("lora_bias")),
        "fan_in_fan_out": bool(config.get("fan_in_fan_out")),
        "rank_pattern": bool(config.get("rank_pattern")),
        "alpha_pattern": bool(config.get("alpha_pattern")),
    }
    used = [key for key, on in unsupported.items() if on]
    if used:
        raise ValueError(f"PEFT folder {str(folder)!r} uses {used}, which LoRAConfig cannot express; export without")


def import_peft_lora(model: nn.Module, folder: str | Path, name: str = "default") -> list[str]:
    """Load a PEFT LoRA folder into ``model`` as our LoRA adapter ``name`` (strength 1).

    Returns:
        The wrapped module names.

    Raises:
        ValueError: for a non-LoRA folder, options LoRAConfig cannot express (DoRA, LoRA bias, per-layer ranks),
            tensors other than ``lora_A``/``lora_B``, or modules missing from ``model``.
    """
    folder = Path(folder)
    config, tensors = _read_peft_folder(folder, "LORA")
    _check_lora_options(folder, config)
    pattern = re.compile(rf"^{re.escape(_PREFIX)}(.+)\.lora_([AB])\.weight$")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        found = pattern.match(key)
        if found is None:
            raise ValueError(f"PEFT folder {str(folder)!r} holds tensor {key!r}, which is not a LoRA A/B weight")
        parts.setdefault(found.group(1), {})[found.group(2)] = value
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    if config.get("use_rslora"):
        alpha *= math.sqrt(rank)  # rsLoRA scales by alpha / sqrt(r) = (alpha · sqrt(r)) / r
    modules = dict(model.named_modules())
    for module_name, pair in parts.items():
        module = modules.get(module_name)
        if not isinstance(module, nn.Linear | nn.Conv2d) or set(pair) != {"A", "B"}:
            raise ValueError(f"PEFT tensors for {module_name!r} do not match a Linear/Conv2d of this model")
        shape = layer_shape(module)
        if pair["A"].numel() != rank * shape.d_in or pair["B"].numel() != shape.d_out * rank:
            weight_shape = tuple(module.weight.shape)
            raise ValueError(f"PEFT LoRA tensors for {module_name!r} do not fit its weight shape {weight_shape}")
    wrapped = add_adapter(model, name, LoRAConfig(rank=rank, alpha=alpha), [f"re:{re.escape(m)}" for m in parts])
    with torch.no_grad():
        for module_name, layer in layers_with(model, name).items():
            adapter = layer.adapters[name]
            adapter.A.copy_(parts[module_name]["A"].reshape(adapter.A.shape))
            adapter.B.copy_(parts[module_name]["B"].reshape(adapter.B.shape))
    return wrapped


def export_peft_oft(
    model: nn.Module, name: str, folder: str | Path, *, base_model_name_or_path: str | None = None
) -> Path:
    """Write OFT adapter ``name`` as a PEFT OFT folder with equal outputs (Linear and 1×1 conv layers only).

    Raises:
        ValueError: for k×k conv layers (PEFT's conv OFT differs, see module docstring) or ``neumann_terms < 3``.
    """
    return _write_folder(folder, *peft_oft_files(model, name, base_model_name_or_path))


def peft_oft_files(
    model: nn.Module, name: str, base_model_name_or_path: str | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The ``adapter_config.json`` contents and tensors of OFT adapter ``name`` (see :func:`export_peft_oft`)."""
    layers = _method_layers(model, name, "oft")
    scale = _uniform_scale(layers, name)
    config = next(iter(layers.values())).adapters[name].config
    if config.cayley == "neumann" and config.neumann_terms < 3:
        raise ValueError(f"OFTConfig.neumann_terms={config.neumann_terms} has no PEFT equivalent; use >= 3")
    tensors = {}
    for module_name, layer in layers.items():
        if isinstance(layer.base_layer, nn.Conv2d) and layer.base_layer.kernel_size != (1, 1):
            raise ValueError(
                f"layer {module_name!r} is a {layer.base_layer.kernel_size} conv; PEFT {PEFT_VERIFIED_VERSION} "
                "applies OFT to k×k convs by folding rotated patches (not identity at init), so no export matches it"
            )
        adapter = layer.adapters[name]
        size = adapter.block_size
        skew = skew_from_triu(adapter.q.detach(), size)
        if adapter.config.coft:
            skew = project_frobenius_ball(skew, adapter.config.coft_eps)
        # Exact: PEFT builds Cayley(-Q_peft), so Q_peft = -s·Q. Neumann: same polynomial in Q_peft = s·Q.
        skew = scale * skew * (-1.0 if adapter.config.cayley == "exact" else 1.0)
        rows, cols = torch.triu_indices(size, size, 1)
        tensors[f"{_PREFIX}{module_name}.oft_R.weight"] = skew[:, rows, cols].contiguous()
    peft_config = {
        "peft_type": "OFT",
        "peft_version": PEFT_VERIFIED_VERSION,
        "task_type": None,
        "base_model_name_or_path": base_model_name_or_path,
        # PEFT takes exactly one of r (number of blocks) and oft_block_size; 0 means unset.
        "r": config.num_blocks or 0,
        "oft_block_size": 0 if config.num_blocks else (config.block_size or DEFAULT_BLOCK_SIZE),
        "module_dropout": 0.0,
        "target_modules": sorted(layers),
        "bias": "none",
        "fan_in_fan_out": False,
        "init_weights": True,
        "coft": False,
        "eps": 6e-5,
        "block_share": config.block_share,
        "use_cayley_neumann": config.cayley == "neumann",
        "num_cayley_neumann_terms": config.neumann_terms + 1,
        "inference_mode": True,
    }
    return peft_config, tensors
