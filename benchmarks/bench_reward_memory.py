"""Peak memory and time per step of reward backprop (K backpropagated steps, with and without checkpointing) and DDPO.

Usage:
    .venv/bin/python benchmarks/bench_reward_memory.py [--ks 1,2,5,10,25] [--sample-steps 25] [--batch-size 16]
        [--steps 2] [--base shapes] [--set key=value ...] [--reward-set key=value ...]

Each configuration runs in a fresh subprocess (so one configuration's allocations cannot raise another's
high-water mark): ``reward-shapes`` at ``backprop_steps=K`` with ``gradient_checkpointing`` on and off for every
``K`` in ``--ks``, then one ``ddpo-shapes`` configuration (a step is one round: sampling without a graph, then one
PPO update that backpropagates one UNet call at a time). Every configuration samples ``--sample-steps`` DDIM steps
at ``--batch-size`` rollouts, from the recipes' guidance (DDPO with 4 rollouts per caption, or fewer where the
batch is not a multiple of 4). ``--set`` overrides apply to both recipes, ``--reward-set`` to reward backprop
only (``--reward-set anchor_weight=0 --reward-set data_weight=0`` times its reward term alone).

A subprocess builds the trainer, takes one warm-up step, resets the high-water mark and times ``--steps`` steps.
Memory is the peak over the timed steps: ``torch.cuda.max_memory_allocated`` on a GPU, else the process's
resident-set high-water mark (``resource.getrusage``; reset after the warm-up through ``/proc/self/clear_refs``
on Linux, so it includes the resident model and the warm-up's freed-but-kept allocator pages, but not loading).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the studio beside this script, not an installed one

#: The recipes measured: reward backprop (its K and checkpointing vary) and DDPO.
REWARD, DDPO = "reward-shapes", "ddpo-shapes"


def reset_peak() -> bool:
    """Reset the high-water mark; False where it cannot be (then the CPU peak includes setup)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return True
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets the peak RSS that getrusage reports
        return True
    except OSError:
        return False


def peak_mib() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(spec: dict) -> dict:
    """Build one configuration, warm up, and measure ``spec["steps"]`` steps (runs in its own process)."""
    from studio.config import apply_overrides
    from studio.recipes import TRAINERS, get_recipe

    with tempfile.TemporaryDirectory() as out:
        overrides = [f"out={out}", "resume=false", "sample_every=0", "checkpoint_every=1000000", *spec["overrides"]]
        config = apply_overrides(get_recipe(spec["recipe"]), overrides)
        trainer = TRAINERS[type(config)](config)
        trainer.setup()
        trainer.optimizer_step()  # warm-up: allocator pools, lazy initialisation
        was_reset = reset_peak()
        start = time.perf_counter()
        for _ in range(spec["steps"]):
            metrics = trainer.optimizer_step()
        seconds = (time.perf_counter() - start) / spec["steps"]
        return {"peak_mib": peak_mib(), "seconds": seconds, "reset": was_reset, "reward": metrics.get("reward")}


def configurations(args) -> list[tuple[str, dict]]:
    common = [f"base={args.base}", f"batch_size={args.batch_size}", f"sample_steps={args.sample_steps}", *args.set]
    runs = []
    for k in args.ks:
        for checkpointing in (True, False):
            label = f"reward backprop K={k:<3} checkpointing {'on ' if checkpointing else 'off'}"
            overrides = [*common, *args.reward_set, f"backprop_steps={k}"]
            overrides.append(f"gradient_checkpointing={str(checkpointing).lower()}")
            runs.append((label, {"recipe": REWARD, "overrides": overrides, "steps": args.steps}))
    groups = f"samples_per_prompt={math.gcd(args.batch_size, 4)}"  # the recipe's 4 where the batch allows
    runs.append((f"DDPO (one round, {args.sample_steps - 1} policy steps)", {
        "recipe": DDPO, "overrides": [*common, groups], "steps": args.steps,
    }))  # fmt: skip
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="1,2,5,10,25", help="backpropagated steps K, comma separated")
    parser.add_argument("--sample-steps", type=int, default=25, help="DDIM steps of every rollout (>= max K)")
    parser.add_argument("--batch-size", type=int, default=16, help="rollouts per step")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per configuration (after one warm-up)")
    parser.add_argument("--base", default="shapes")
    parser.add_argument("--set", action="append", default=[], help="an override for both recipes, key=value")
    parser.add_argument("--reward-set", action="append", default=[], help="an override for reward backprop only")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    args.ks = [int(k) for k in args.ks.split(",")]
    if max(args.ks) > args.sample_steps:
        parser.error(f"--ks up to {max(args.ks)} needs --sample-steps >= {max(args.ks)}")

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    memory = "max_memory_allocated" if torch.cuda.is_available() else "peak RSS"
    print(f"{args.base}: batch {args.batch_size}, {args.sample_steps} DDIM steps, {args.steps} timed steps ({device})")
    print(f"{'configuration':<48} {memory + ' (MiB)':>24} {'s/step':>8}")
    for label, spec in configurations(args):
        command = [sys.executable, __file__, "--child", json.dumps(spec)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            print(f"{label:<48} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else '?'}")
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        mark = "" if result["reset"] else " (incl. setup)"
        print(f"{label:<48} {result['peak_mib']:>24.0f}{mark} {result['seconds']:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
