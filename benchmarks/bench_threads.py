"""Threads beside a busy core: wall time of a real command with and without another process spinning.

Usage: .venv/bin/python benchmarks/bench_threads.py [--repo .] [--runs 2] [--n 16]

Runs ``mixstudio generate image "a red circle" -n N`` in fresh processes, alone and beside a process that keeps
one of the two cores busy (a Python busy loop), for three settings:

- ``defaults``: 2 threads and ``OMP_WAIT_POLICY`` unset: before ``studio/threads.py`` (an older checkout via
  ``--repo``) that leaves OpenMP's own waits (threads spin a while after each parallel region); today the CLI then
  chooses passive waits;
- ``OMP_WAIT_POLICY=ACTIVE``: 2 threads that always spin (the worst case);
- ``--threads 1``.

It prints the median wall time of ``--runs`` runs per cell. ``--repo`` points at another checkout to time its CLI
the same way (an older commit has no ``--threads`` flag: that cell is skipped).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {
    "defaults (2 threads)": ({"OMP_NUM_THREADS": "2"}, []),
    "OMP_WAIT_POLICY=ACTIVE": ({"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "ACTIVE"}, []),
    "--threads 1": ({}, ["--threads", "1"]),
}


def run(repo: Path, env: dict[str, str], flags: list[str], n: int, out: Path) -> float:
    argv = [sys.executable, "-m", "studio", "--quiet", *flags, "generate", "image", "a red circle", "-n", str(n)]
    start = time.perf_counter()
    subprocess.run([*argv, "--out", str(out)], cwd=repo, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--n", type=int, default=16)
    args = parser.parse_args()
    repo = args.repo.resolve()
    new = (repo / "studio" / "threads.py").is_file()
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    base |= {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(repo)}
    print(f"repo {repo}; generate image -n {args.n}; median of {args.runs} fresh processes; seconds")
    print(f"{'setting':<28} {'alone':>7} {'beside a busy core':>19}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (env, flags) in SETTINGS.items():
            if flags and not new:
                continue
            cells = []
            for busy in (False, True):
                spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
                try:
                    times = [run(repo, base | env, flags, args.n, Path(tmp) / f"o{i}") for i in range(args.runs)]
                finally:
                    if spinner is not None:
                        spinner.kill()
                cells.append(statistics.median(times))
            print(f"{name:<28} {cells[0]:>7.1f} {cells[1]:>19.1f}", flush=True)


if __name__ == "__main__":
    main()
