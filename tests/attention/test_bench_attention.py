"""benchmarks/bench_attention.py on a machine without CUDA: it lists the backends and exits 0."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_without_cuda_lists_backends_and_exits_cleanly():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_attention.py")],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no CUDA device: nothing to time" in done.stdout
    for name in ("sdpa", "triton", "xformers", "reference", "FlexAttention"):
        assert name in done.stdout
