"""Build the attention kernels for an H100 (sm_90, bfloat16) without a GPU, and print what each one costs.

Usage: .venv/bin/python tests/kernels/compile_check.py [--head-dims 40 64 80 128 160] [--arch 90]

The interpreter tests cannot see what only the GPU compiler sees: ``tl.dot`` shape and layout rules, bfloat16
code paths, register pressure and spills. This plans every launch the SD shapes make (self-attention, 77-key
cross-attention with split dK/dV partials, the two-branch epilogue; forward and backward), compiles each to a
cubin with Triton's bundled ptxas, and prints registers per thread, spilled bytes and shared memory per kernel.
It replaces Triton's driver with an offline stand-in, so it must run in its own process (the slow test in
``test_compile_check.py`` runs it in a subprocess).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import replace

import torch
import triton
from triton.backends.compiler import GPUTarget


class OfflineDriver:
    """Just enough of a Triton driver to compile for ``target`` (``warmup`` never launches)."""

    def __init__(self, arch: int) -> None:
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")


def resources(compiled) -> tuple[int, int]:
    """(registers per thread, spilled bytes per thread) from the cubin, via Triton's bundled cuobjdump."""
    from triton.backends.nvidia import compiler as nvidia

    tool = os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    found = re.search(r"REG:(\d+) STACK:\d+ SHARED:\d+ LOCAL:(\d+)", text)
    return (int(found.group(1)), int(found.group(2))) if found else (-1, -1)


def plans(kernels, head_dim: int, split: bool):
    """(case, launches) for the SD-like shapes at one head dim: batch 2, 8 heads, bfloat16."""
    config = kernels.kernel_config(head_dim, split_head_dim=split)
    scale = head_dim**-0.5

    def make(seq: int) -> torch.Tensor:
        return torch.zeros(2, seq, 8, head_dim, dtype=torch.bfloat16)

    q, k_self, k_text, k_image = make(256), make(256), make(77), make(16)
    weights = torch.zeros(2, 2, 256, 1)
    cases = {
        "self": ([(k_self, k_self, None)], None, config),
        "cross77+mask": ([(k_text, k_text, torch.zeros(2, 8, 77))], None, replace(config, kv_splits=2)),
        "two-branch 77+16": ([(k_text, k_text, None), (k_image, k_image, None)], weights, config),
    }
    for case, (branches, w, cfg) in cases.items():
        launch, out, lse, branch_out = kernels.plan_forward(q, branches, w, scale, cfg, store_branches=w is not None)
        backward = kernels.plan_backward(out, q, branches, w, out, branch_out, lse, scale, cfg)
        yield case, cfg, [launch, *backward.launches]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head-dims", type=int, nargs="+", default=[40, 64, 80, 128, 160])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (90: H100)")
    parser.add_argument("--padded", action="store_true", help="also build the padded variant of split head dims")
    args = parser.parse_args(argv)
    triton.runtime.driver.set_active(OfflineDriver(args.arch))
    from studio.kernels import load_kernels

    kernels = load_kernels(interpret=False)
    print(f"triton {triton.__version__}, sm_{args.arch}, bfloat16, batch 2, 8 heads")
    print(f"{'head_dim':>8} {'tiles':>8} {'case':<17} {'kernel':<14} {'warps':>5} {'stages':>6} {'regs':>5} "
          f"{'spill B':>7} {'smem KiB':>8}")  # fmt: skip
    failures = 0
    for head_dim in args.head_dims:
        splits = [True]
        if args.padded and kernels.head_dim_blocks(head_dim) != kernels.head_dim_blocks(head_dim, split=False):
            splits.append(False)
        for split in splits:
            for case, cfg, launches in plans(kernels, head_dim, split):
                tiles = f"{cfg.block_d}+{cfg.block_d2}" if cfg.block_d2 else str(cfg.block_d)
                seen = set()
                for launch in launches:
                    name = launch.kernel.fn.__name__.strip("_").removesuffix("_kernel")
                    try:
                        compiled = launch.compile()
                    except Exception as err:  # report every failure, then fail
                        failures += 1
                        print(f"{head_dim:>8} {tiles:>8} {case:<17} {name:<14} FAILED: {str(err)[:1500]}")
                        continue
                    regs, spill = resources(compiled)
                    key = (name, regs, spill)
                    if key in seen:
                        continue
                    seen.add(key)
                    meta = compiled.metadata
                    print(f"{head_dim:>8} {tiles:>8} {case:<17} {name:<14} {meta.num_warps:>5} {meta.num_stages:>6} "
                          f"{regs:>5} {spill:>7} {meta.shared / 1024:>8.1f}")  # fmt: skip
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
