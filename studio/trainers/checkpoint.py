"""Checkpoints on disk: written whole (temporary folder, then rename) with a ``latest`` pointer, read back with checks.

A checkpoint folder ``checkpoints/step-XXXXXXXX`` holds ``model.safetensors`` (the trainable weights),
``extra.safetensors`` (EMA weights, the RNG state), ``optimizer.pt`` (optimizer and lr-schedule state: tensors and
numbers only, read with ``weights_only=True``) and ``trainer_state.json`` (step, config). Anything unreadable, or
weights that do not fit the model being trained, is refused in one line that names the file and the fix.
"""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from studio.io import atomic_dir, atomic_write_text

CHECKPOINTS = "checkpoints"
LATEST = "latest"


@dataclass
class Checkpoint:
    """What a checkpoint folder holds, read and checked."""

    path: Path
    step: int
    config: dict[str, Any]
    model: dict[str, torch.Tensor]
    extra: dict[str, torch.Tensor]
    optimizer: dict[str, Any]


def write_checkpoint(
    root: Path,
    step: int,
    model: dict[str, torch.Tensor],
    extra: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    config: dict[str, Any],
    keep: int,
) -> Path:
    """Write ``root/step-XXXXXXXX`` whole, point ``root/latest`` at it, keep the newest ``keep`` checkpoints."""
    path = root / f"step-{step:08d}"
    with atomic_dir(path, name="checkpoint", force=True) as tmp:
        save_file(model, tmp / "model.safetensors")
        save_file(extra, tmp / "extra.safetensors")
        torch.save(optimizer, tmp / "optimizer.pt")
        atomic_write_text(tmp / "trainer_state.json", json.dumps({"step": step, "config": config}, indent=2) + "\n")
    atomic_write_text(root / LATEST, path.name + "\n")
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint ``root/latest`` names, or None when there is none.

    Raises:
        ValueError: when ``latest`` names a folder that is missing or incomplete.
    """
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    if not (path / "trainer_state.json").is_file():
        raise ValueError(
            f"checkpoint {str(path)!r} named by {str(pointer)!r} is incomplete; delete it (and {LATEST}) or set "
            "resume=false"
        )
    return path


def read_checkpoint(path: Path) -> Checkpoint:
    """Read every file of a checkpoint folder (nothing is unpickled but tensors and plain values).

    Raises:
        ValueError: naming the file that is missing, truncated or tampered with.
    """
    fix = "delete this checkpoint folder to resume from the one before, or set resume=false"
    current = path / "trainer_state.json"
    try:
        state = json.loads(current.read_text())
        step, config = int(state["step"]), dict(state["config"])
        current = path / "model.safetensors"
        model = load_file(current)
        current = path / "extra.safetensors"
        extra = load_file(current)
        current = path / "optimizer.pt"
        optimizer = torch.load(current, weights_only=True)
        if not isinstance(optimizer, dict) or not {"optimizer", "lr_scheduler"} <= set(optimizer):
            raise ValueError("it holds no optimizer and lr-schedule state")
    except (OSError, ValueError, KeyError, TypeError, SafetensorError, pickle.UnpicklingError, RuntimeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"checkpoint file {str(current)!r} cannot be read ({reason}); {fix}") from None
    return Checkpoint(path, step, config, model, extra, optimizer)


def remove_orphans(root: Path) -> list[Path]:
    """Remove the temporary folders that killed writes left beside the checkpoints (``.step-*.tmp-*``, ``.old-``)."""
    orphans = [*root.glob(".step-*.tmp-*"), *root.glob(".step-*.old-*")] if root.is_dir() else []
    for orphan in orphans:
        shutil.rmtree(orphan, ignore_errors=True)
    return orphans


def truncate_log(path: Path, step: int) -> int:
    """Drop the rows of ``log.csv`` past ``step`` (a resumed run replays those steps); returns how many went."""
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines(keepends=True)
    header, rows = lines[:1], lines[1:]
    kept = [row for row in rows if _row_step(row) <= step]
    if len(kept) != len(rows):
        atomic_write_text(path, "".join(header + kept))
    return len(rows) - len(kept)


def _row_step(row: str) -> int:
    try:
        return int(float(row.split(",", 1)[0]))
    except ValueError:
        return -1
