"""Per-prompt advantage normalisation for policy-gradient trainers (DDPO's stat tracker).

DDPO (Black, Janner et al. 2023) normalises each reward by the statistics of the rewards of its own
prompt, so that a prompt that is easy (every sample scores high) and one that is hard are both pushed towards
their better samples; the authors' code keeps a buffer of each prompt's recent rewards
(kvablack/ddpo-pytorch, ``stat_tracking.py``; TRL's ``PerPromptStatTracker``). This is the same rule, with its
state as checkpoint tensors so that a resumed run normalises as an uninterrupted one::

    A_i = (r_i − μ_c) / (σ_c + 1e-6)    μ_c, σ_c: mean and population std of prompt c's last buffer_size rewards
                                        (this batch's included), or of this whole batch while c has < min_count

Example: one prompt scored ``[1, 3]`` with ``min_count = 2`` gets ``μ = 2``, ``σ = 1``, so advantages ``[−1, 1]``;
with ``min_count = 4`` it falls back to the batch's statistics.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Sequence

import torch

#: Added to the standard deviation, as in the authors' code, so a prompt whose rewards are all equal gets A = 0.
STD_EPS = 1e-6


class PerPromptStatTracker:
    """Normalises rewards by the statistics of each prompt's recent rewards (see the module docstring).

    Args:
        buffer_size: rewards kept per prompt (the oldest are dropped first).
        min_count: rewards a prompt needs in its buffer before its own statistics are used.

    Raises:
        ValueError: for ``buffer_size < 1`` or ``min_count`` outside ``[1, buffer_size]``.
    """

    def __init__(self, buffer_size: int, min_count: int):
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {buffer_size}")
        if not 1 <= min_count <= buffer_size:
            raise ValueError(
                f"min_count must be in [1, buffer_size={buffer_size}] (a buffer never holds more), got {min_count}"
            )
        self.buffer_size, self.min_count = buffer_size, min_count
        self.buffers: dict[str, deque[float]] = {}

    def update(self, prompts: Sequence[str], rewards: torch.Tensor) -> torch.Tensor:
        """Add a batch's rewards to their prompts' buffers and return the batch's advantages.

        Args:
            prompts: the ``B`` prompts.
            rewards: ``(B,)`` rewards of those samples.

        Returns:
            ``(B,)`` advantages, in ``rewards``' dtype and device.
        """
        if len(prompts) != len(rewards):
            raise ValueError(f"got {len(prompts)} prompts for {len(rewards)} rewards; pass one prompt per reward")
        values = rewards.detach().double().cpu()
        batch_mean, batch_std = values.mean().item(), values.std(correction=0).item()
        advantages = torch.empty_like(values)
        for prompt in dict.fromkeys(prompts):  # unique, in first-seen order
            rows = torch.tensor([i for i, p in enumerate(prompts) if p == prompt])
            buffer = self.buffers.setdefault(prompt, deque(maxlen=self.buffer_size))
            buffer.extend(values[rows].tolist())
            if len(buffer) < self.min_count:
                mean, std = batch_mean, batch_std
            else:
                held = torch.tensor(list(buffer), dtype=torch.float64)
                mean, std = held.mean().item(), held.std(correction=0).item()
            advantages[rows] = (values[rows] - mean) / (std + STD_EPS)
        return advantages.to(rewards.dtype).to(rewards.device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The buffers as tensors (a checkpoint's extra state): prompts as UTF-8 JSON bytes, rewards in float64."""
        prompts = list(self.buffers)
        return {
            "prompts": torch.tensor(list(json.dumps(prompts).encode()), dtype=torch.uint8),
            "counts": torch.tensor([len(self.buffers[p]) for p in prompts], dtype=torch.int64),
            "rewards": torch.tensor([r for p in prompts for r in self.buffers[p]], dtype=torch.float64),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`state_dict`."""
        prompts = json.loads(bytes(state["prompts"].tolist()).decode())
        rewards = iter(state["rewards"].tolist())
        self.buffers = {
            p: deque((next(rewards) for _ in range(n)), maxlen=self.buffer_size)
            for p, n in zip(prompts, state["counts"].tolist(), strict=True)
        }
