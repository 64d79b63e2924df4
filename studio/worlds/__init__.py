"""Procedural data worlds: ``shapes`` (images) and ``synth`` (music with stems)."""

from __future__ import annotations

from studio.worlds.base import Labels, Phrase, PhraseTable, Prompt, Sample, World, WorldDataset, sample_seed
from studio.worlds.shapes import ShapesWorld
from studio.worlds.synth import SynthWorld

#: The one place a world name maps to its class.
WORLDS: dict[str, type[World]] = {"shapes": ShapesWorld, "synth": SynthWorld}


def get_world(name: str) -> World:
    """The world called ``name``.

    Raises:
        ValueError: naming the unknown world and the known ones.
    """
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}; use one of {sorted(WORLDS)}")
    return WORLDS[name]()


__all__ = [
    "WORLDS",
    "Labels",
    "Phrase",
    "PhraseTable",
    "Prompt",
    "Sample",
    "ShapesWorld",
    "SynthWorld",
    "World",
    "WorldDataset",
    "get_world",
    "sample_seed",
]
