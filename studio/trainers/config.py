"""What every trainer's config shares, and the seeded random draws and lr schedule of the shared loop."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch


@dataclass(kw_only=True)
class TrainerConfig:
    """Fields every trainer shares.

    Attributes:
        out: run folder (checkpoints/, samples/, log.csv, config.json, and the exported model).
        seed: seed of initialisation and of every per-sample random draw.
        max_steps: optimizer steps to run.
        batch_size: global batch (split evenly across data-parallel processes).
        lr: peak learning rate (AdamW, linear warm-up then cosine decay to 10%).
        lr_warmup_steps: warm-up steps.
        weight_decay: AdamW weight decay.
        grad_clip: max gradient norm, or None.
        mixed_precision: accelerate's ``no``, ``fp16`` or ``bf16``.
        checkpoint_every: steps between checkpoints (one is always written at the end).
        keep_checkpoints: how many recent checkpoints to keep.
        sample_every: steps between sample grids (0: only at the end).
        log_every: steps between CSV log rows.
        resume: continue from ``out/checkpoints/latest`` when it exists.
        max_minutes: wall-clock budget; the run checkpoints and stops when it is spent (None: no budget).
        num_workers: data processes that prepare the next steps' batches (:meth:`Trainer.load_batch`) while
            the model trains; 0 prepares each batch in the training process. Worth it where the model runs
            on an accelerator and rendering world samples on one CPU core would starve it.
        attention: the attention backend of the trained model's attention layers (``studio.attention.BACKENDS``;
            None: the model's own processors).
        grid_steps: sampler steps of the sample grids (and any images a trainer samples for itself, such as
            DreamBooth's class images) drawn during training.
    """

    out: Path = Path("runs/run")
    seed: int = 0
    max_steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-4
    lr_warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    sample_every: int = 0
    log_every: int = 10
    resume: bool = True
    max_minutes: float | None = None
    num_workers: int = 0
    grid_steps: int = 25
    attention: str | None = None

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every", "grid_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not (0 < self.lr < 1):
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")
        if self.sample_every < 0 or self.lr_warmup_steps < 0:
            raise ValueError("sample_every and lr_warmup_steps must be >= 0")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be positive or none, got {self.grad_clip}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.attention is not None:
            from studio.attention import BACKENDS

            if self.attention not in BACKENDS:
                raise ValueError(f"attention {self.attention!r} is unknown; use one of {sorted(BACKENDS)}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be positive or none, got {self.max_minutes}")


#: Sample index of the draws that a whole training step shares (REINFORCE's and DDPO's choice of steps); beyond
#: any real sample index, so it never collides with one.
STEP_DRAW = 2**62


def sample_generator(seed: int, step: int, index: int) -> torch.Generator:
    """The generator of one sample's random draws at one step (independent of process layout)."""
    state = np.random.SeedSequence([seed, step, index]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the peak lr, then cosine decay to 10% of it at ``total`` steps."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
