"""Recipes: named functions that return a training config (``mixstudio train NAME --set key=value``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from studio.judges.train import JudgeTrainConfig


def _judge(world: str, role: str) -> Callable[[], JudgeTrainConfig]:
    # reward and eval judges differ in init seed, data stream and width, so they fail differently
    seed, data_seed, width = (1, 101, 24) if role == "reward" else (2, 202, 32)
    per_world = {"shapes": {"train_samples": 24_000, "epochs": 6}, "synth": {"train_samples": 9_000, "epochs": 8}}

    def recipe() -> JudgeTrainConfig:
        return JudgeTrainConfig(world=world, role=role, seed=seed, data_seed=data_seed, width=width,
                                out=Path(f"runs/judge-{world}-{role}"), **per_world[world])

    recipe.__doc__ = f"The {role} judge of the {world} world (ships in assets/judges/{world}-{role})."
    return recipe


#: The one place a recipe name maps to the function that builds its config.
RECIPES: dict[str, Callable[[], Any]] = {
    f"judge-{world}-{role}": _judge(world, role) for world in ("shapes", "synth") for role in ("reward", "eval")
}


def get_recipe(name: str) -> Any:
    """The config of recipe ``name``.

    Raises:
        ValueError: naming the unknown recipe and the known ones.
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; use one of {sorted(RECIPES)}")
    return RECIPES[name]()


def run_config(config: Any, command: str = "") -> Any:
    """Run the trainer that owns ``config``'s type."""
    from studio.judges.train import train_judge

    runners: dict[type, Callable[..., Any]] = {JudgeTrainConfig: train_judge}
    runner = runners.get(type(config))
    if runner is None:
        raise ValueError(f"no trainer for config type {type(config).__name__}")
    return runner(config, command=command)
