"""Save one named adapter as a single ``.safetensors`` file, read it, and apply it to a model.

The file's metadata holds one JSON header under the key ``"studio_adapter"``::

    {"format": 1, "name": "style", "method": "oft", "config": {...}, "targets": ["attn.to_q", ...],
     "base_model_id": "runwayml/stable-diffusion-v1-5", "library_version": "0.1.0", "scale": 1.0,
     "layer_shapes": {"attn.to_q": [320, 320], ...}}

Tensors are keyed ``"<layer name>.<param name>"`` (:func:`~studio.adapters.inject.adapter_state_dict`).
``scale`` is a number, or ``{layer name: number}`` when layers differ. ``layer_shapes`` (the wrapped layers' weight
shapes; files written before it existed lack it) lets ``studio.adapters.formats`` export an additive adapter without
loading its base model. Reading is safetensors only; nothing is ever unpickled. Loading a file of any supported format
(``load_adapter``) lives in ``loading.py``.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from studio.adapters.base import layer_shape
from studio.adapters.inject import adapter_state_dict, add_adapter, layers_with
from studio.adapters.layer import AdapterLayer
from studio.adapters.registry import AdapterConfig, adapter_class, config_from_dict, config_to_dict
from studio.guards import check_finite
from studio.io import atomic_write_bytes

logger = logging.getLogger(__name__)

HEADER_KEY = "studio_adapter"
FORMAT_VERSION = 1


def _library_version() -> str:
    import studio

    return str(getattr(studio, "__version__", "0"))


def save_adapter(model: nn.Module, name: str, path: str | Path, *, base_model_id: str | None = None) -> Path:
    """Write adapter ``name`` of ``model`` to ``path`` atomically (temporary sibling, then rename).

    Args:
        model: a model holding adapter ``name``.
        name: the adapter to save.
        path: the ``.safetensors`` file to write.
        base_model_id: the base model's id (hub id or path), checked again by :func:`load_adapter`.

    Returns:
        ``path`` as a Path.
    """
    layers = layers_with(model, name)
    configs = {json.dumps(config_to_dict(layer.adapters[name].config), sort_keys=True) for layer in layers.values()}
    if len(configs) != 1:
        raise ValueError(f"adapter {name!r} has different configs on different layers; it cannot be saved as one")
    config = next(iter(layers.values())).adapters[name].config
    scales = {module_name: layer.scales[name] for module_name, layer in layers.items()}
    header = {
        "format": FORMAT_VERSION,
        "name": name,
        "method": config.method,
        "config": config_to_dict(config),
        "targets": list(layers),
        "base_model_id": base_model_id,
        "library_version": _library_version(),
        "scale": next(iter(scales.values())) if len(set(scales.values())) == 1 else scales,
        "layer_shapes": {module_name: list(layer.base_layer.weight.shape) for module_name, layer in layers.items()},
    }
    tensors = {key: value.contiguous() for key, value in adapter_state_dict(model, name).items()}
    check_finite(tensors, f"adapter {name!r}", "its training diverged; nothing was saved (lower the learning rate)")
    path = Path(path)
    atomic_write_bytes(path, safetensors.torch.save(tensors, metadata={HEADER_KEY: json.dumps(header)}))
    return path


def read_adapter_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of an adapter file written by :func:`save_adapter`.

    Raises:
        ValueError: for a missing file, a file that is not safetensors, or one without a studio header.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"adapter file {str(path)!r} does not exist; check the path")
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"adapter file {str(path)!r} is not a readable safetensors file ({err})") from None
    if HEADER_KEY not in metadata:
        raise ValueError(
            f"adapter file {str(path)!r} has no {HEADER_KEY!r} header; it was not written by save_adapter "
            "(files of other formats: studio.adapters.import_adapter)"
        )
    try:
        header = json.loads(metadata[HEADER_KEY])
    except json.JSONDecodeError as err:
        raise ValueError(
            f"adapter file {str(path)!r} has a header that is not valid JSON ({err}); re-save it"
        ) from None
    required = {"name": str, "method": str, "config": dict, "targets": list}
    bad = [
        key for key, kind in required.items() if not isinstance(header, dict) or not isinstance(header.get(key), kind)
    ]
    if bad or not all(isinstance(t, str) for t in header["targets"]):
        raise ValueError(
            f"adapter file {str(path)!r} has a header without a valid {(bad or ['targets'])[0]!r}; re-save it with "
            "save_adapter"
        )
    return header


def _check_base_model(path: Path, saved: str | None, expected: str | None) -> None:
    """Refuse an adapter saved for another base model (ids equal, or the same folder however it was written)."""
    same = saved == expected or (saved and expected and Path(saved).absolute() == Path(expected).absolute())
    if saved is not None and expected is not None and not same:
        raise ValueError(
            f"adapter {path.name!r} was trained on base model {saved!r}, not {expected!r}; load it into that model"
        )
    if saved is None or expected is None:
        logger.info("adapter %s: base model id not checked (saved %r, expected %r)", path.name, saved, expected)


def _check_targets(path: Path, model: nn.Module, targets: list[str], config: AdapterConfig, tensors: dict) -> None:
    """Check every target exists, is adaptable and takes exactly the saved tensor shapes; raise one-line errors."""
    modules = dict(model.named_modules())
    missing = [t for t in targets if not isinstance(modules.get(t), nn.Linear | nn.Conv2d | AdapterLayer)]
    if missing:
        raise ValueError(
            f"adapter {path.name!r} targets {len(missing)} modules missing from this model (or not Linear/Conv2d), "
            f"e.g. {missing[:3]}; load it into the model it was trained for"
        )
    for target in targets:
        module = modules[target]
        shape = module.shape if isinstance(module, AdapterLayer) else layer_shape(module)
        # A throwaway generator: building the reference adapter must not consume the global RNG.
        expected = adapter_class(config)(config, shape, generator=torch.Generator()).state_dict()
        for key, value in expected.items():
            saved = tensors.get(f"{target}.{key}")
            if saved is None or tuple(saved.shape) != tuple(value.shape):
                got = None if saved is None else tuple(saved.shape)
                raise ValueError(
                    f"adapter {path.name!r}: tensor {target}.{key} has shape {got} but this model's layer needs "
                    f"{tuple(value.shape)}; the adapter was trained for a different architecture"
                )


def read_adapter(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The header and tensors of a file written by :func:`save_adapter` (checked as in :func:`read_adapter_header`)."""
    header = read_adapter_header(path)
    try:
        tensors = safetensors.torch.load_file(str(path))
    except Exception as err:  # a header that reads but tensor data cut short
        raise ValueError(f"adapter file {str(path)!r} is not a readable safetensors file ({err})") from None
    return header, tensors


def write_adapter(path: str | Path, header: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write ``header`` and ``tensors`` as an adapter file, atomically (what :func:`save_adapter` writes)."""
    path = Path(path)
    tensors = {key: value.contiguous() for key, value in tensors.items()}
    atomic_write_bytes(path, safetensors.torch.save(tensors, metadata={HEADER_KEY: json.dumps(header)}))
    return path


def apply_adapter(
    model: nn.Module,
    path: Path,
    header: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    name: str | None = None,
    base_model_id: str | None = None,
) -> list[str]:
    """Inject the adapter described by ``header`` and ``tensors`` (as :func:`save_adapter` writes them) into ``model``.

    Args:
        model: the base model (modified in place).
        path: where the adapter came from, for messages.
        header: the adapter's header (method, config, targets, scale, base model id).
        tensors: ``"<target>.<param>"`` tensors.
        name: the adapter name in ``model``; default: the header's name.
        base_model_id: if given and the header names a different base model, refuse.

    Returns:
        The wrapped module names.

    Raises:
        ValueError: for a mismatched base model id, non-finite tensors, missing target modules or shape mismatches;
            the model is not modified in those cases.
    """
    _check_base_model(path, header.get("base_model_id"), base_model_id)
    try:
        config = config_from_dict(header["method"], header["config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"adapter file {str(path)!r}: {err}") from None
    targets = list(header["targets"])
    check_finite(tensors, f"adapter file {str(path)!r}", "it was saved from a diverged run; retrain it")
    _check_targets(path, model, targets, config, tensors)
    name = header["name"] if name is None else name
    wrapped = add_adapter(model, name, config, targets=[f"re:{re.escape(t)}" for t in targets])
    layers = layers_with(model, name)
    scale = header.get("scale", 1.0)
    with torch.no_grad():
        for module_name, layer in layers.items():
            adapter = layer.adapters[name]
            for key, value in adapter.state_dict().items():
                value.copy_(tensors[f"{module_name}.{key}"])
            layer.set_scale(name, scale[module_name] if isinstance(scale, dict) else scale)
    return wrapped
