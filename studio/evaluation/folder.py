"""Score a folder of samples described by a manifest (``mixstudio eval DIR``): a reader over :mod:`scoring`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from studio.evaluation.scoring import EvalReport, score_samples
from studio.io import atomic_write_text, read_image, read_wav
from studio.manifest import Manifest, read_manifest
from studio.models.zoo import Role
from studio.worlds import World, get_world


def load_samples(folder: Path, manifest: Manifest, world: World) -> list[np.ndarray]:
    """Read every file of the manifest: images ``(H, W, 3)`` uint8 or waveforms ``(T,)`` float32.

    Raises:
        ValueError: naming the file that is missing, unreadable or of the wrong format.
    """
    arrays = []
    for item in tqdm(manifest.items, desc="read samples", unit="file", leave=False, mininterval=2):
        path = folder / item.file
        arrays.append(read_image(path, getattr(world, "SIZE", None)) if world.modality == "image" else read_wav(path))
    return arrays


def evaluate_folder(folder: str | Path, role: Role = "eval", reference_size: int = 256) -> EvalReport:
    """Judge every sample in ``folder`` against its prompt (see :func:`studio.evaluation.score_samples`).

    Args:
        folder: a folder with ``manifest.json`` (see :mod:`studio.manifest`).
        role: which judge scores (``eval`` for reporting; ``reward`` to compare against the training signal).
        reference_size: world samples drawn for the Fréchet reference.

    Raises:
        ValueError: for a malformed manifest or unreadable/wrong-format files (naming the file).
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    world = get_world(manifest.world)
    data = load_samples(folder, manifest, world)
    labels = [item.labels for item in manifest.items] if all(item.labels for item in manifest.items) else None
    prompts = [item.prompt for item in manifest.items]
    return score_samples(data, prompts, world, role=role, reference_size=reference_size, labels=labels)


def write_report(report: Any, path: Path) -> None:
    """Write a report (anything with ``to_json()``) as JSON, atomically."""
    atomic_write_text(path, report.to_json() + "\n")
