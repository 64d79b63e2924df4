"""Training runs started from the app: one ``mixstudio train`` subprocess at a time, watched through its files.

A subprocess (not a thread) so that cancelling is a signal to its process group, and a crash or an
out-of-memory kill in training never takes the web server down. Progress is read from what the shared
trainer writes anyway: ``log.csv`` (one row per ``log_every`` steps), ``config.json`` (``max_steps``)
and ``samples/step-*.png``; the process's own output goes to a log file whose tail the app shows.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

State = Literal["idle", "running", "finished", "failed", "cancelled"]


def train_argv(recipe: str, overrides: list[str], out: Path) -> list[str]:
    """The command line of a run: ``python -m studio train RECIPE --set K=V ... --out OUT``."""
    sets = [arg for item in overrides for arg in ("--set", item)]
    return [sys.executable, "-m", "studio", "train", recipe, *sets, "--out", str(out)]


@dataclass
class TrainingStatus:
    """What the app shows about the current (or last) training run.

    Attributes:
        name: run name (the folder under the app's ``runs/``), empty when idle.
        state: ``idle``, ``running``, ``finished``, ``failed`` or ``cancelled``.
        step: last logged optimizer step (0 before the first ``log.csv`` row).
        max_steps: the run's ``max_steps`` from its ``config.json``, when the trainer has one.
        rows: ``log.csv`` rows as numbers (``step``, ``loss``, ``lr``, ...).
        latest_sample: newest ``samples/*.png``, if any.
        log_tail: last lines of the process output.
        folder: the run folder.
        model: the exported pipeline folder once written (``folder/model``), else None.
        returncode: the process exit status once it has ended.
    """

    name: str = ""
    state: State = "idle"
    step: int = 0
    max_steps: int | None = None
    rows: list[dict[str, float]] = field(default_factory=list)
    latest_sample: Path | None = None
    log_tail: str = ""
    folder: Path | None = None
    model: Path | None = None
    returncode: int | None = None

    @property
    def fraction(self) -> float | None:
        """Completed fraction of ``max_steps`` (None when unknown)."""
        return min(1.0, self.step / self.max_steps) if self.max_steps else None

    def summary(self) -> str:
        """One Markdown line: state, name, step count and the last loss."""
        if self.state == "idle":
            return "No training run yet."
        steps = f"step {self.step}" + (f" / {self.max_steps} ({self.fraction:.0%})" if self.max_steps else "")
        loss = self.rows[-1].get("loss") if self.rows else None
        loss_text = f" · loss {loss:.4g}" if loss is not None and math.isfinite(loss) else ""
        code = f" (exit code {self.returncode})" if self.state == "failed" else ""
        return f"**{self.state}**{code} · `{self.name}` · {steps}{loss_text}"


class TrainingJob:
    """One training subprocess writing into ``folder``, its output into ``log_path``.

    Args:
        name: run name.
        argv: the command to run (see :func:`train_argv`).
        folder: the run folder the trainer writes (``log.csv``, ``samples/``, ``model/``).
        log_path: file that receives the process's stdout and stderr.
        cwd: working directory of the process (the app's workdir, so stray relative writes stay inside).
    """

    def __init__(self, name: str, argv: list[str], folder: Path, log_path: Path, cwd: Path):
        self.name, self.folder, self.log_path = name, folder, log_path
        self.cancelled = False
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TQDM_MININTERVAL": "5", "PYTHONUNBUFFERED": "1"}
        with log_path.open("wb") as log:
            # own session: cancel signals the whole process group (data loader workers included)
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True
            )
        logger.info("started training %s (pid %d): %s", name, self.process.pid, " ".join(argv))

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def cancel(self, grace_s: float = 10.0) -> None:
        """SIGTERM the run's process group, then SIGKILL after ``grace_s`` seconds if it is still alive."""
        if not self.running:
            return
        self.cancelled = True
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=grace_s)
                break
            except subprocess.TimeoutExpired:
                continue
        logger.info("cancelled training %s", self.name)

    def status(self) -> TrainingStatus:
        """Read the run's files into a :class:`TrainingStatus`."""
        code = self.process.poll()
        if code is None:
            state: State = "running"
        elif self.cancelled:
            state = "cancelled"
        else:
            state = "finished" if code == 0 else "failed"
        rows = read_log_csv(self.folder / "log.csv")
        samples = sorted((self.folder / "samples").glob("*.png"))
        model = self.folder / "model"
        return TrainingStatus(
            name=self.name,
            state=state,
            step=int(rows[-1].get("step", 0)) if rows else 0,
            max_steps=_max_steps(self.folder / "config.json"),
            rows=rows,
            latest_sample=samples[-1] if samples else None,
            log_tail=tail(self.log_path),
            folder=self.folder,
            model=model if (model / "model_index.json").is_file() else None,
            returncode=code,
        )


def read_log_csv(path: Path) -> list[dict[str, float]]:
    """Rows of a trainer's ``log.csv`` as floats (a half-written last line is skipped)."""
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            try:
                rows.append({k: float(v) for k, v in row.items() if k and v not in (None, "")})
            except ValueError:
                continue
    return rows


def _max_steps(config_path: Path) -> int | None:
    try:
        value = json.loads(config_path.read_text()).get("max_steps")
    except (OSError, ValueError, AttributeError):
        return None
    return int(value) if isinstance(value, int) else None


def tail(path: Path, lines: int = 15, max_bytes: int = 16_384) -> str:
    """The last ``lines`` lines of a log (progress-bar carriage returns count as line breaks)."""
    if not path.is_file():
        return ""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - max_bytes))
        text = f.read().decode(errors="replace")
    parts = [p for p in text.replace("\r", "\n").split("\n") if p.strip()]
    return "\n".join(parts[-lines:])
