"""The embedded model zoo: names of shipped assets → folders under ``assets/``."""

from __future__ import annotations

import os
from dataclasses import dataclass
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


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped in ``assets/models/<name>``.

    Attributes:
        modality: ``image`` or ``audio``.
        world: the procedural world it was trained on (and whose judges score it).
        command: the ``mixstudio`` command that makes it.
        role: ``base``, ``quality``/``diversity`` for the two unguided CFG-distilled students whose
            weight-space merge is the quality↔diversity slider, or ``reward`` for a base finetuned on the
            reward judge's adherence.
    """

    modality: Literal["image", "audio"]
    world: str
    command: str
    role: Literal["base", "quality", "diversity", "reward"] = "base"


#: The guidance the shipped ``shapes`` students were distilled with (their teacher is ``shapes-reward``): w = 3,
#: rescaled, guided only at t/T <= 0.6 (docs/BASE_MODELS.md: the best guided setting of the ``shapes`` base).
REFINED_SHAPES_TEACHER = "--set guidance_scale=3 --set guidance_rescale=0.7 --set guidance_interval=0,0.6"

#: Every shipped model by name.
EMBEDDED: dict[str, EmbeddedModel] = {
    "shapes": EmbeddedModel(
        "image",
        "shapes",
        "mixstudio train pretrain-shapes-gpu && "
        "mixstudio train pretrain-shapes-gpu-continue --set export=assets/models/shapes",
    ),
    "synth": EmbeddedModel(
        "audio",
        "synth",
        "mixstudio train pretrain-synth-gpu && mixstudio train pretrain-synth-mode --set export=assets/models/synth",
    ),
    "shapes-quality": EmbeddedModel(
        "image",
        "shapes",
        f"mixstudio train cfg-distill-shapes --set base=shapes-reward {REFINED_SHAPES_TEACHER} --set seed=1 "
        "--set export=assets/models/shapes-quality",
        "quality",
    ),
    "shapes-diversity": EmbeddedModel(
        "image",
        "shapes",
        f"mixstudio train cfg-distill-shapes --set base=shapes-reward {REFINED_SHAPES_TEACHER} --set seed=1 "
        "--set diversity_weight=0.5 --set export=assets/models/shapes-diversity",
        "diversity",
    ),
    "shapes-reward": EmbeddedModel(
        "image",
        "shapes",
        "mixstudio train reward-shapes --set anchor_weight=0 --set export=assets/models/shapes-reward",
        "reward",
    ),
    "synth-quality": EmbeddedModel(
        "audio",
        "synth",
        "mixstudio train cfg-distill-synth --set guidance_scale=5 --set on_policy=0.25 --set max_steps=1200 "
        "--set max_minutes=45 --set export=assets/models/synth-quality",
        "quality",
    ),
    "synth-diversity": EmbeddedModel(
        "audio",
        "synth",
        "mixstudio train cfg-distill-synth --set guidance_scale=4 --set diversity_weight=0.5 --set max_minutes=45 "
        "--set export=assets/models/synth-diversity",
        "diversity",
    ),
}


def world_of(base: str, world: str | None) -> str:
    """The world a trainer on ``base`` uses: ``world`` if given, else the embedded model's own.

    Raises:
        ValueError: if neither says which world (``base`` is a path or hub id and ``world`` is None).
    """
    if world is not None:
        return world
    if base not in EMBEDDED:
        raise ValueError(f"base {base!r} is not an embedded model; set world=shapes or world=synth")
    return EMBEDDED[base].world


def model_dir(name: str) -> Path:
    """Folder of an embedded model.

    Raises:
        ValueError: if the name is unknown or the model is not shipped (naming the command that makes it).
    """
    if name not in EMBEDDED:
        raise ValueError(f"unknown embedded model {name!r}; use one of {sorted(EMBEDDED)}")
    path = assets_dir() / "models" / name
    if not (path / "model_index.json").is_file():
        raise ValueError(f"embedded model {name!r} is not at {str(path)!r}; make it with `{EMBEDDED[name].command}`")
    return path


def slider_pairs() -> dict[str, tuple[str, str]]:
    """World → (quality student, diversity student) for every world that ships both."""
    pairs = {}
    for world in {m.world for m in EMBEDDED.values()}:
        roles = {m.role: name for name, m in EMBEDDED.items() if m.world == world}
        if "quality" in roles and "diversity" in roles:
            pairs[world] = (roles["quality"], roles["diversity"])
    return dict(sorted(pairs.items()))


#: Every shipped source separator by name: the command that makes it.
EMBEDDED_SEPARATORS: dict[str, str] = {
    "synth-sep": "mixstudio train separate-synth --set max_steps=900 && mixstudio train separate-synth-hdemucs --set "
    "max_steps=1100 && python benchmarks/separation_table.py --models bsrnn=runs/separate-synth/model "
    "hdemucs=runs/separate-synth-hdemucs/model --export assets/models/synth-sep",
}


def separator_dir(name: str) -> Path:
    """Folder of a shipped separator.

    Raises:
        ValueError: if the name is unknown or the separator is not shipped (naming the command that makes it).
    """
    if name not in EMBEDDED_SEPARATORS:
        raise ValueError(f"unknown embedded separator {name!r}; use one of {sorted(EMBEDDED_SEPARATORS)}")
    path = assets_dir() / "models" / name
    if not (path / "config.json").is_file():
        raise ValueError(f"separator {name!r} is not at {str(path)!r}; make it with `{EMBEDDED_SEPARATORS[name]}`")
    return path
