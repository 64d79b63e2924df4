"""Put adapters into a model: wrap matching ``nn.Linear`` / ``nn.Conv2d`` submodules, and model-wide helpers.

Target patterns:

* a plain string matches a module whose dotted name equals it or ends with ``"." + pattern``, i.e. a suffix of
  whole name components: ``"to_q"`` matches ``"down.0.attn1.to_q"`` but not ``"attn1.add_to_q"``;
  ``"to_out.0"`` matches the Linear inside diffusers' ``to_out`` list.
* ``"re:<regex>"`` must match the whole dotted name (``re.fullmatch``).

After :func:`add_adapter`, every parameter of the model that does not belong to an adapter is frozen
(``requires_grad=False``) and every adapter parameter is trainable.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from studio.adapters.layer import AdapterLayer
from studio.adapters.registry import AdapterConfig

DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def matches(module_name: str, pattern: str) -> bool:
    """Whether ``module_name`` matches one target ``pattern`` (suffix of name components, or ``re:`` regex)."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], module_name) is not None
    return module_name == pattern or module_name.endswith("." + pattern)


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    """Every :class:`AdapterLayer` in ``model``, by dotted name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLayer)}


def find_targets(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Dotted names of the modules matching any of ``targets`` (never the insides of an AdapterLayer).

    Raises:
        ValueError: if a matched module is not an nn.Linear, nn.Conv2d or AdapterLayer, or is the model itself.
    """
    if isinstance(targets, str):
        raise TypeError(f"targets must be a list of patterns, not the string {targets!r}; pass [{targets!r}]")
    wrapped = tuple(name + "." for name in adapter_layers(model))
    found = []
    for name, module in model.named_modules():
        if name.startswith(wrapped) or not any(matches(name, p) for p in targets):
            continue
        if not isinstance(module, nn.Linear | nn.Conv2d | AdapterLayer) or not name:
            raise ValueError(
                f"module {name!r} matches targets {list(targets)} but is a {type(module).__name__}; adapters wrap "
                "named nn.Linear/nn.Conv2d submodules; narrow the pattern"
            )
        found.append(name)
    return found


def _wrap(model: nn.Module, module_name: str) -> tuple[AdapterLayer, bool]:
    module = model.get_submodule(module_name)
    if isinstance(module, AdapterLayer):
        return module, False
    parent_name, _, child = module_name.rpartition(".")
    layer = AdapterLayer(module)
    setattr(model.get_submodule(parent_name), child, layer)
    return layer, True


def _unwrap(model: nn.Module, module_name: str) -> None:
    parent_name, _, child = module_name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, model.get_submodule(module_name).base_layer)


def _freeze_all_but_adapters(model: nn.Module) -> None:
    adapter_params = {id(p) for layer in adapter_layers(model).values() for p in layer.adapters.parameters()}
    for param in model.parameters():
        param.requires_grad_(id(param) in adapter_params)


def add_adapter(
    model: nn.Module,
    name: str,
    config: AdapterConfig,
    targets: Sequence[str] = DEFAULT_TARGETS,
    *,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Add adapter ``name`` built from ``config`` to every module matching ``targets``.

    Args:
        model: any module tree; it is modified in place.
        name: adapter name, unique per layer.
        config: one of the configs in ``METHODS``.
        targets: patterns (see module docstring); the default targets diffusers attention projections.
        generator: the source of the random initialisation.

    Returns:
        The dotted names of the wrapped modules, in model order.

    Raises:
        ValueError: if nothing matches (the message lists the patterns and some module names), or an adapter does
            not fit a layer; on error the model is left as it was.
    """
    found = find_targets(model, targets)
    if not found:
        available = [n for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)][:8]
        raise ValueError(
            f"no module matches targets {list(targets)}; Linear/Conv2d modules include {available}; pass suffixes of "
            "those names or 're:<regex>' patterns"
        )
    done: list[tuple[str, AdapterLayer, bool]] = []
    try:
        for module_name in found:
            layer, new = _wrap(model, module_name)
            done.append((module_name, layer, new))
            layer.add_adapter(name, config, generator=generator)
    except Exception:
        for module_name, layer, new in reversed(done):
            if name in layer.adapters and name not in layer.merged_names:
                layer.delete_adapter(name)
            if new:
                _unwrap(model, module_name)
        raise
    _freeze_all_but_adapters(model)
    return found


def layers_with(model: nn.Module, name: str) -> dict[str, AdapterLayer]:
    """The adapter layers holding adapter ``name``, by dotted name.

    Raises:
        ValueError: if no layer holds it (naming the adapters present).
    """
    layers = {n: layer for n, layer in adapter_layers(model).items() if name in layer.adapters}
    if not layers:
        known = sorted({a for layer in adapter_layers(model).values() for a in layer.adapters})
        raise ValueError(f"no adapter named {name!r} in this model; adapters present: {known}")
    return layers


def adapter_targets(model: nn.Module, name: str) -> list[str]:
    """Dotted names of the layers holding adapter ``name``."""
    return list(layers_with(model, name))


def set_adapter_scale(model: nn.Module, name: str, scale: float) -> None:
    """Set the strength of adapter ``name`` on every layer holding it."""
    for layer in layers_with(model, name).values():
        layer.set_scale(name, scale)


def enable_adapters(model: nn.Module) -> None:
    """Re-enable every adapter layer after :func:`disable_adapters`."""
    for layer in adapter_layers(model).values():
        layer.enable()


def disable_adapters(model: nn.Module) -> None:
    """Make every adapter layer return its base layer's output (unmerging merged adapters first)."""
    for layer in adapter_layers(model).values():
        layer.disable()


def merge_adapters(model: nn.Module, names: Iterable[str] | None = None) -> None:
    """Merge adapters into base weights: ``names`` in that order, or every unmerged adapter of each layer."""
    names = None if names is None else list(names)
    for name in names or ():
        layers_with(model, name)  # raises for a name no layer holds
    for layer in adapter_layers(model).values():
        layer.merge(None if names is None else [n for n in names if n in layer.adapters])


def unmerge_adapters(model: nn.Module) -> None:
    """Restore every base weight."""
    for layer in adapter_layers(model).values():
        layer.unmerge()


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter ``name`` everywhere; layers left without adapters are unwrapped."""
    for module_name, layer in layers_with(model, name).items():
        layer.delete_adapter(name)
        if not layer.adapters:
            _unwrap(model, module_name)


def bake_adapters(model: nn.Module) -> list[str]:
    """Merge every adapter (each at its strength, in order) into the base weights and unwrap every adapter layer.

    Unlike :func:`merge_adapters` this cannot be undone: the model is left with plain ``nn.Linear`` /
    ``nn.Conv2d`` layers whose weights hold the adapters, ready for ``save_pretrained``.

    Returns:
        The names of the layers that were unwrapped.
    """
    layers = adapter_layers(model)
    for module_name, layer in layers.items():
        layer.merge()
        _unwrap(model, module_name)
    return list(layers)


def adapter_state_dict(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Adapter ``name``'s tensors keyed ``"<layer name>.<param name>"``, e.g. ``"attn.to_q.A"`` (detached)."""
    return {
        f"{module_name}.{key}": tensor.detach()
        for module_name, layer in layers_with(model, name).items()
        for key, tensor in layer.adapters[name].state_dict().items()
    }


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters with ``requires_grad`` (after :func:`add_adapter`: exactly the adapter parameters)."""
    return [p for p in model.parameters() if p.requires_grad]


def orthogonality_penalty(model: nn.Module) -> torch.Tensor:
    """The sum of every adapter's regulariser (:meth:`Adapter.penalty`; a zero scalar if none has one).

    Today that is qGOFT's ``Σ penalty_weight · ‖MᵀM - I‖²_F``, which keeps its relaxed rotations near orthogonal.
    """
    total = torch.zeros(())
    for layer in adapter_layers(model).values():
        for adapter in layer.adapters.values():
            penalty = adapter.penalty()
            if penalty is not None:
                total = total.to(penalty) + penalty
    return total
