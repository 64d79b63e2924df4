"""Paired timing: variants run alternately, in rotating order, in one process; ratios are medians of per-round ratios.

Timing variant A for a while and then variant B lets anything else on the machine (another job, a thermal change, a
background flush) land on one of them only: on our 2-core machine the same two pipelines read 1.41-1.66x timed one
after the other and 2.03x timed alternately. Here every round runs each variant once, in an order that rotates
from round to round (so none always runs first, after a warm cache, or last), and a ratio is the median over rounds
of that round's ratio, so a slow round slows both sides of its own ratio. Each variant is also timed by its
process CPU time with one thread, a second figure that load on other cores barely moves.

Usage::

    from timing import paired
    result = paired({"cfg": run_cfg, "student": run_student}, rounds=7)
    print(result.table(reference="cfg"))
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Paired:
    """Per-variant wall and CPU seconds of each round (round ``r`` ran the variants in a rotated order)."""

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    threads: int = 1

    def median(self, name: str) -> float:
        """Median wall seconds of one variant."""
        return statistics.median(self.wall[name])

    def ratio(self, slow: str, fast: str, cpu: bool = False) -> float:
        """Median over rounds of ``time(slow) / time(fast)`` (wall, or one-thread CPU time with ``cpu``)."""
        times = self.cpu if cpu else self.wall
        if not times.get(slow) or not times.get(fast):
            return float("nan")
        return statistics.median([a / b for a, b in zip(times[slow], times[fast], strict=True)])

    def table(self, reference: str) -> str:
        """One row per variant: median wall seconds, its ratio to ``reference`` (wall), and the CPU-time ratio."""
        rounds = len(self.wall[reference])
        lines = [
            f"{rounds} rounds, rotating order; wall at {self.threads} thread(s); "
            f"ratio = median of per-round ratios to {reference!r}",
            f"{'variant':<28} {'wall s':>8} {'÷ ref':>7} {'cpu s (1 thr)':>14} {'÷ ref cpu':>9}",
        ]
        for name in self.wall:
            cpu = statistics.median(self.cpu[name]) if self.cpu.get(name) else float("nan")
            cpu_ratio = self.ratio(name, reference, cpu=True)
            lines.append(
                f"{name:<28} {self.median(name):8.3f} {self.ratio(name, reference):7.3f} {cpu:14.3f} {cpu_ratio:9.3f}"
            )
        return "\n".join(lines)


def paired(
    variants: dict[str, Callable[[], object]], rounds: int = 5, warmup: int = 1, cpu_time: bool = True
) -> Paired:
    """Time each variant once per round, the order rotating by one place each round.

    Args:
        variants: name -> a call that does the work once.
        rounds: timed rounds (the ratios are medians over them).
        warmup: untimed rounds first (allocator growth, lazy initialisation, compilation).
        cpu_time: also run every round at one thread and record process CPU time (doubles the cost).

    Returns:
        :class:`Paired` with the wall times at the current thread count and, with ``cpu_time``, the one-thread CPU
        times.
    """
    names = list(variants)
    result = Paired(wall={n: [] for n in names}, cpu={n: [] for n in names}, threads=torch.get_num_threads())
    for r in range(warmup + rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            variants[name]()
            if r >= warmup:
                result.wall[name].append(time.perf_counter() - start)
        if cpu_time and r >= warmup:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                for name in order:
                    start = time.process_time()
                    variants[name]()
                    result.cpu[name].append(time.process_time() - start)
            finally:
                torch.set_num_threads(threads)
    return result
