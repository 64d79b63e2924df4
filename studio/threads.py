"""CPU threads: how many a process uses, and how idle OpenMP threads wait.

Measured on the 2-core machine (docs/SPEED.md): beside another busy process, PyTorch's OpenMP threads that
spin while they wait for work (``OMP_WAIT_POLICY=ACTIVE``, libgomp's behaviour for a short while after each
parallel region) take the core the other process needs, and both crawl: one process alternating 1 and 2
threads at load ~5 took 5.05 s with one thread and 65.6 s with two. With ``OMP_WAIT_POLICY=PASSIVE`` idle
threads sleep, and two threads stay faster than one. The CLI and the app therefore start with ``PASSIVE``
unless the user set a policy, and use as many threads as the process may run on (``os.sched_getaffinity``),
or ``--threads N``.

The wait policy is read once, when the OpenMP runtime starts (at ``import torch``), so :func:`prefer_passive_waits`
must run before torch is imported; the thread count can change later (:func:`set_threads`).
"""

from __future__ import annotations

import os
import sys

#: The thread counts the CLI accepts.
MAX_THREADS = 256


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's limit), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS and Windows have no affinity mask
        return max(1, os.cpu_count() or 1)


def prefer_passive_waits() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy; True when it took effect.

    It only takes effect before torch (and its OpenMP runtime) is imported; afterwards the variable is left as it
    is and False is returned.
    """
    if "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def set_threads(threads: int | None = None) -> int:
    """Use ``threads`` intra-op threads in this process (None: :func:`available_cores`); returns the count.

    Before torch is imported it sets ``OMP_NUM_THREADS`` (and ``MKL_NUM_THREADS``), which the runtime reads at
    start; after, :func:`torch.set_num_threads`. Data-loader and training subprocesses inherit the variables.

    Raises:
        ValueError: for a count below 1 or above :data:`MAX_THREADS`.
    """
    count = available_cores() if threads is None else threads
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_THREADS:
        raise ValueError(f"--threads must be a whole number from 1 to {MAX_THREADS}, got {threads!r}")
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(count)
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(count)
    return count
