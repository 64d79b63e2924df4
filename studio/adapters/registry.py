"""The one table from adapter method names to their config and adapter classes, and config (de)serialisation.

Each method's config lives beside its adapter (``lora.py``, ``oft.py``, ...); this module imports them one way.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any

from studio.adapters.boft import BOFTAdapter, BOFTConfig
from studio.adapters.dense import DenseAdapter, DenseConfig
from studio.adapters.ether import ETHERAdapter, ETHERConfig, ETHERPlusAdapter, ETHERPlusConfig
from studio.adapters.givens import GOFTAdapter, GOFTConfig, QGOFTAdapter, QGOFTConfig
from studio.adapters.kron import DiffuseKronAAdapter, DiffuseKronAConfig, LoKrAdapter, LoKrConfig
from studio.adapters.lora import LoRAAdapter, LoRAConfig
from studio.adapters.oft import OFTAdapter, OFTConfig

AdapterConfig = (
    LoRAConfig
    | OFTConfig
    | BOFTConfig
    | GOFTConfig
    | QGOFTConfig
    | ETHERConfig
    | ETHERPlusConfig
    | DiffuseKronAConfig
    | LoKrConfig
    | DenseConfig
)

METHODS: dict[str, tuple[type, type]] = {
    "lora": (LoRAConfig, LoRAAdapter),
    "oft": (OFTConfig, OFTAdapter),
    "boft": (BOFTConfig, BOFTAdapter),
    "goft": (GOFTConfig, GOFTAdapter),
    "qgoft": (QGOFTConfig, QGOFTAdapter),
    "ether": (ETHERConfig, ETHERAdapter),
    "etherplus": (ETHERPlusConfig, ETHERPlusAdapter),
    "diffusekrona": (DiffuseKronAConfig, DiffuseKronAAdapter),
    "lokr": (LoKrConfig, LoKrAdapter),
    "dense": (DenseConfig, DenseAdapter),
}


def adapter_class(config: AdapterConfig) -> type:
    """The adapter class for a config instance, looked up in ``METHODS``."""
    method = getattr(config, "method", None)
    if method not in METHODS or not isinstance(config, METHODS[method][0]):
        allowed = [config_cls.__name__ for config_cls, _ in METHODS.values()]
        raise TypeError(f"config {config!r} is not an adapter config; pass one of {allowed}")
    return METHODS[method][1]


def config_to_dict(config: AdapterConfig) -> dict[str, Any]:
    """The JSON-ready hyperparameters of ``config`` (its method name is ``config.method``)."""
    return dataclasses.asdict(config)


def config_from_dict(method: str, params: dict[str, Any]) -> AdapterConfig:
    """Rebuild a config from :func:`config_to_dict` output.

    Raises:
        ValueError: for an unknown method or unknown fields.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; allowed: {sorted(METHODS)}")
    cls = METHODS[method][0]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"{cls.__name__} has no fields {unknown}; allowed: {sorted(known)}")
    return cls(**params)


def config_from_options(options: Mapping[str, Any], owner: str = "adapter") -> AdapterConfig:
    """A config from ``{"method": name, **hyperparameters}`` whose values may be text (``--set adapter.rank=8``).

    Text values are parsed by the type of the method's config field (``rank: int`` → ``8``), not guessed.

    Raises:
        ValueError: for a missing or unknown method, unknown fields, or values of the wrong type (naming
            ``owner.field``).
    """
    from studio.config import parse_value

    params = dict(options)
    method = params.pop("method", None)
    if method is None:
        raise ValueError(f"{owner} needs a method, e.g. --set {owner}.method=lora")
    if method not in METHODS:
        raise ValueError(f"{owner}.method={method!r} is unknown; allowed: {sorted(METHODS)}")
    hints = typing.get_type_hints(METHODS[method][0])
    for key, value in params.items():
        if isinstance(value, str) and key in hints and hints[key] is not str:
            params[key] = parse_value(hints[key], value, f"{owner}.{key}")
    return config_from_dict(method, params)
