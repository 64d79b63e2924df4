"""kill -9 at several points of a training run (mid-step, inside a checkpoint write, before the ``latest`` pointer
moves, before old checkpoints are pruned): each run resumes and ends with exactly the weights of an uninterrupted
run, leaves no temporary folders and logs each step once."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

DRILL = Path(__file__).with_name("drill_trainer.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
POINTS = ["mid-step", "checkpoint-files", "before-latest", "before-prune"]


def run(out: Path, point: str | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, str(DRILL), str(out), *([point] if point else [])]
    return subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=300)


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    root = out / "checkpoints"
    return load_file(root / (root / "latest").read_text().strip() / "model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("straight") / "run"
    assert run(out).returncode == 0
    return final_weights(out)


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_a_killed_run_resumes_to_the_uninterrupted_weights(tmp_path, uninterrupted, point):
    out = tmp_path / "run"
    killed = run(out, point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (out / "model").exists()
    resumed = run(out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    weights = final_weights(out)
    assert weights.keys() == uninterrupted.keys()
    assert all(torch.equal(weights[k], uninterrupted[k]) for k in weights), point
    assert not [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]  # no orphans left
    with (out / "log.csv").open() as f:
        steps = [int(row["step"]) for row in csv.DictReader(f)]
    assert steps == list(range(1, 7)), steps  # each step logged once, replayed rows dropped
