"""How fast do the default separators run on a CPU? Parameters, size and real-time factor of ``separate``.

Usage:
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_separation.py [--seconds 60] [--threads 1 2] [--repeats 3]

For each family in ``studio.separation.SEPARATORS`` (except the blend) at its default size, with random
weights (speed does not depend on them), it separates ``--seconds`` of 16 kHz mono noise through
:func:`studio.separation.separate` (the whole path: overlap-add in training-length chunks with 25% overlap)
and prints the best of ``--repeats`` wall times as a real-time factor (audio seconds per wall second), with the
process CPU time of that run: on a machine shared with other jobs the wall time of a multi-threaded run
swings widely, and CPU time per audio second is the steadier number.
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
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
