"""Typed configs: JSON round-trip and ``--set key=value`` overrides for nested dataclasses."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) dataclass config; paths become strings."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build ``cls`` from a dict written by :func:`to_dict`, recursing into nested dataclasses.

    Raises:
        ValueError: for keys the config does not have.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no fields {unknown}; known fields: {sorted(names)}")
    kwargs = {key: _coerce(hints[key], value, key) for key, value in data.items()}
    return cls(**kwargs)


def check_finite_fields(config: Any, prefix: str = "") -> None:
    """Refuse a (nested) config with a NaN or inf in any number field, tuple or options dict.

    Raises:
        ValueError: naming the first such field.
    """
    from studio.guards import is_finite

    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            check_finite_fields(value, f"{prefix}{f.name}.")
        elif not is_finite(value):
            raise ValueError(f"{prefix}{f.name} must be a finite number, got {value!r}")


def save_json(config: Any, path: str | Path) -> None:
    """Write a config as indented JSON (atomically)."""
    from studio.io import atomic_write_text

    atomic_write_text(Path(path), json.dumps(to_dict(config), indent=2) + "\n")


def load_json(cls: type[T], path: str | Path) -> T:
    """Read a config written by :func:`save_json`."""
    return from_dict(cls, json.loads(Path(path).read_text()))


def apply_overrides(config: T, overrides: list[str]) -> T:
    """Return a copy of ``config`` with ``key=value`` overrides applied (dotted keys reach nested configs).

    Values are parsed by the field's type: ``int``, ``float``, ``bool`` (true/false/1/0), ``str``,
    ``Path``, ``X | None`` (``none``), tuples/lists (comma separated) and ``Literal``. A dict field (an adapter's
    ``{"method": ..., **options}``) keeps its values as text for the config that owns it, which parses them by
    the fields of the class its method names (:func:`studio.adapters.config_from_options`). The overrides are
    applied together, so a config validates them as one change: ``sample_steps=3`` and ``backprop_steps=3``
    pass in either order even where ``backprop_steps <= sample_steps`` is checked.

    Raises:
        ValueError: for a malformed override, an unknown key, a value of the wrong type, or a config that
            refuses the result.
    """
    changes = _Changes()
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not key=value; write e.g. --set steps=100")
        _record(config, key.strip().split("."), raw.strip(), key, changes)
    return _apply(config, changes)


class _Changes(dict):
    """Parsed overrides of one config: field name -> new value, or -> the :class:`_Changes` of a nested config."""


def _record(config: Any, path: list[str], raw: str, full_key: str, changes: _Changes) -> None:
    if not dataclasses.is_dataclass(config):
        raise ValueError(f"override {full_key!r}: {path[0]!r} is not a nested config")
    fields = {f.name: f for f in dataclasses.fields(config)}
    name = path[0]
    if name not in fields:
        raise ValueError(f"unknown config key {full_key!r}; known keys here: {sorted(fields)}")
    current = getattr(config, name)
    if len(path) == 2 and isinstance(current, dict):  # options whose types the owning config knows: adapter.rank=8
        changes[name] = {**changes.get(name, current), path[1]: raw}
    elif len(path) > 1:
        nested = changes.setdefault(name, _Changes())
        if not isinstance(nested, _Changes):
            raise ValueError(f"override {full_key!r} conflicts with an earlier override of {name!r}")
        _record(current, path[1:], raw, full_key, nested)
    else:
        changes[name] = parse_value(typing.get_type_hints(type(config))[name], raw, full_key)


def _apply(config: Any, changes: _Changes) -> Any:
    """``config`` with ``changes``, each nested config replaced once (so each validates once)."""
    values = {
        name: _apply(getattr(config, name), change) if isinstance(change, _Changes) else change
        for name, change in changes.items()
    }
    return dataclasses.replace(config, **values)


def parse_value(tp: Any, raw: str, key: str) -> Any:
    """``raw`` (text from ``--set key=raw``) as a value of type ``tp``.

    Raises:
        ValueError: naming ``key`` and the type expected.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if raw.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return parse_value(arg, raw, key)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(errors[0])
    if origin is typing.Literal:
        if raw not in [str(a) for a in args]:
            raise ValueError(f"--set {key}={raw}: allowed values are {list(args)}")
        return next(a for a in args if str(a) == raw)
    if origin in (tuple, list):
        inner = args[0] if args else str
        items = [parse_value(inner, part.strip(), key) for part in raw.split(",") if part.strip()]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"--set {key}={raw}: expected true or false")
        return raw.lower() in ("true", "1", "yes")
    if tp in (int, float, str, Path):
        try:
            value = tp(raw)
        except ValueError:
            raise ValueError(f"--set {key}={raw}: expected {tp.__name__}") from None
        if tp is float and not math.isfinite(value):
            raise ValueError(f"--set {key}={raw}: expected a finite number")
        return value
    raise ValueError(f"--set {key}: fields of type {tp} cannot be set from the command line")


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """JSON value → field type (nested dataclasses, tuples, paths)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if value is None:
        return None
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key) if len(inner) == 1 else value
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if tp is Path:
        return Path(value)
    return value
