"""The embedded model zoo: names of shipped assets → folders under ``assets/``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

Role = Literal["reward", "eval"]
ROLES: tuple[Role, ...] = ("reward", "eval")


def assets_dir() -> Path:
    """The folder of shipped weights: ``$MIXSTUDIO_ASSETS`` or ``assets/`` beside the ``studio`` package."""
    override = os.environ.get("MIXSTUDIO_ASSETS")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "assets"


def judge_dir(world: str, role: Role) -> Path:
    """Folder of the shipped ``role`` judge for ``world``.

    Raises:
        ValueError: for an unknown role, or a judge that is not shipped (naming the command that makes it).
    """
    if role not in ROLES:
        raise ValueError(f"judge role must be one of {list(ROLES)}, got {role!r}")
    path = assets_dir() / "judges" / f"{world}-{role}"
    if not (path / "config.json").is_file():
        raise ValueError(
            f"no {role} judge for world {world!r} at {str(path)!r}; "
            f"train it with `mixstudio train judge-{world}-{role} --out {path}`"
        )
    return path


#: Embedded base models: name → (modality, folder under assets/models).
EMBEDDED_MODELS: dict[str, str] = {"shapes": "image", "synth": "audio"}


def world_of(base: str, world: str | None) -> str:
    """The world a trainer on ``base`` uses: ``world`` if given, else the embedded model's own.

    Raises:
        ValueError: if neither says which world (``base`` is a path or hub id and ``world`` is None).
    """
    if world is not None:
        return world
    if base not in EMBEDDED_MODELS:
        raise ValueError(f"base {base!r} is not an embedded model; set world=shapes or world=synth")
    return base


def model_dir(name: str) -> Path:
    """Folder of an embedded model.

    Raises:
        ValueError: if the name is unknown or the model is not shipped (naming the command that makes it).
    """
    if name not in EMBEDDED_MODELS:
        raise ValueError(f"unknown embedded model {name!r}; use one of {sorted(EMBEDDED_MODELS)}")
    path = assets_dir() / "models" / name
    if not (path / "model_index.json").is_file():
        raise ValueError(
            f"embedded model {name!r} is not at {str(path)!r}; make it with `mixstudio train pretrain-{name}`"
        )
    return path
