"""Launching a trainer on one process or many: the accelerator, the process checks, the teardown, the hardware line.

``torchrun --nproc_per_node N -m studio train ...`` or ``accelerate launch`` start N processes; each builds its
:class:`~accelerate.Accelerator` with :func:`make_accelerator`, and :func:`run_trainer` tears the process group down
when training ends.
"""

from __future__ import annotations

import os
from typing import Protocol

import torch
from accelerate import Accelerator


class Fits(Protocol):
    """What :func:`run_trainer` runs: a :class:`~studio.trainers.base.Trainer`."""

    def fit(self) -> dict[str, float]: ...


def training_hardware(device: torch.device, processes: int = 1) -> str:
    """What a run trained on, for model cards: ``1 NVIDIA H100 80GB HBM3``, ``2 CPU threads``, or with
    data parallelism ``2 processes × 1 CPU thread``."""
    if device.type == "cuda":
        one = f"1 {torch.cuda.get_device_name(device)}"
    else:
        threads = torch.get_num_threads()
        one = f"{threads} CPU thread{'s' if threads > 1 else ''}"
    return one if processes == 1 else f"{processes} processes × {one}"


def make_accelerator(mixed_precision: str = "no") -> Accelerator:
    """An ``Accelerator`` that also sees torchrun's processes on a machine without a GPU.

    Launched as several processes (torchrun or ``accelerate launch``: ``WORLD_SIZE`` > 1) on a
    machine with no CUDA device, accelerate finds no multi-device backend and, unless told
    ``cpu=True``, runs each process as a lone copy: every rank would then train the whole batch
    alone and write the same run folder.
    """
    cpu = launched_processes() > 1 and not torch.cuda.is_available()
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


def launched_processes() -> int:
    """How many processes the launcher (torchrun, ``accelerate launch``) started; 1 for a plain run."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_process_count(accelerator: Accelerator) -> None:
    """Refuse an accelerator that runs fewer processes than the launcher started (each would train alone)."""
    launched = launched_processes()
    if accelerator.num_processes != launched:
        raise RuntimeError(
            f"launched as {launched} processes (WORLD_SIZE) but the accelerator runs {accelerator.num_processes}; "
            "build it with studio.trainers.base.make_accelerator()"
        )


def run_trainer(trainer: Fits) -> dict[str, float]:
    """``trainer.fit()``, then the process group torn down: a data-parallel process that exits with its group
    alive can abort in the backend's teardown (seen in CI: gloo's 'terminate called without an active exception')."""
    try:
        return trainer.fit()
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
