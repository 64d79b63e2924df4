"""How fast do the default separators run on a CPU? Parameters, size and real-time factor of ``separate``.

Usage:
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_separation.py [--seconds 60] [--threads 1 2] [--repeats 3]

For each family in ``studio.separation.SEPARATORS`` (except the blend) at its default size, with random
weights (speed does not depend on them), it separates ``--seconds`` of 16 kHz mono noise through
:func:`studio.separation.separate` (the whole path: overlap-add in training-length chunks with 25% overlap)
and prints the best of ``--repeats`` wall times as a real-time factor (audio seconds per wall second), with the
process CPU time of that run: on a machine shared with other jobs the wall time of a multi-threaded run
swings widely, and CPU time per audio second is the steadier number.

``--memory MODEL`` instead runs ``mixstudio separate`` on files of 1, 10 and 60 minutes (16 kHz mono noise) in
fresh processes and prints each one's peak resident memory: the file is read and written in windows, so the peak
should not grow with the length.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from studio.separation import SEPARATORS, separate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["bsrnn", "hdemucs"])
    parser.add_argument("--memory", default=None, metavar="MODEL", help="peak memory of `mixstudio separate`")
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    args = parser.parse_args()
    if args.memory is not None:
        return memory(args.memory, args.minutes)
    audio = np.random.default_rng(0).uniform(-0.5, 0.5, (1, round(args.seconds * 16_000))).astype(np.float32)
    print(f"{'model':<8} {'params':>10} {'MB':>6} {'threads':>7} {'seconds':>8} {'x real time':>11} {'cpu s':>6}")
    for name in args.models:
        torch.manual_seed(0)
        model = SEPARATORS[name]().eval()
        params = sum(p.numel() for p in model.parameters())
        for threads in args.threads:
            torch.set_num_threads(threads)
            separate(model, audio[:, :16_000], 16_000)  # warm-up
            best, cpu = float("inf"), float("nan")
            for _ in range(args.repeats):
                start, start_cpu = time.perf_counter(), time.process_time()
                separate(model, audio, 16_000)
                if time.perf_counter() - start < best:
                    best, cpu = time.perf_counter() - start, time.process_time() - start_cpu
            size = f"{name:<8} {params:>10,} {4 * params / 1e6:>6.1f}"
            print(f"{size} {threads:>7} {best:>8.2f} {args.seconds / best:>11.1f} {cpu:>6.2f}", flush=True)


def memory(model: str, minutes: list[float]) -> None:
    """Peak RSS of ``mixstudio separate`` (a fresh process each) on 16 kHz mono noise of each length."""
    import resource
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import soundfile as sf

    print(f"{'minutes':>7} {'peak RSS MB':>11} {'wall s':>7} {'x real time':>11}")
    for length in minutes:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "long.wav"
            with sf.SoundFile(path, "w", 16_000, 1, "PCM_16") as f:  # written in pieces: the writer stays small
                rng = np.random.default_rng(0)
                for _ in range(int(length * 60)):
                    f.write(rng.uniform(-0.3, 0.3, 16_000).astype(np.float32))
            start = time.perf_counter()
            argv = [sys.executable, "-m", "studio", "--quiet", "separate", str(path), "--model", model]
            subprocess.run([*argv, "--out", str(Path(tmp) / "out")], check=True)
            wall = time.perf_counter() - start
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child so far
            print(f"{length:>7g} {peak:>11.0f} {wall:>7.1f} {60 * length / wall:>11.1f}", flush=True)


if __name__ == "__main__":
    main()
