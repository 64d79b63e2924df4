"""Judges (attribute classifiers + embedders) and the metrics built on them."""

from __future__ import annotations

import functools

from studio.judges.metrics import (
    Adherence,
    frechet_distance,
    grouped_diversity,
    pairwise_diversity,
    prompt_adherence,
    sdr,
    si_sdr,
)
from studio.judges.model import Judge, JudgeOutput
from studio.models.zoo import Role, judge_dir


@functools.cache
def load_judge(world: str, role: Role = "eval") -> Judge:
    """The shipped ``role`` judge of ``world`` (``reward`` for training, ``eval`` for reporting), in eval mode.

    Cached: callers must not modify the returned module.
    """
    judge = Judge.from_pretrained(judge_dir(world, role))
    judge.eval().requires_grad_(False)
    return judge


__all__ = [
    "Adherence",
    "Judge",
    "JudgeOutput",
    "frechet_distance",
    "grouped_diversity",
    "load_judge",
    "pairwise_diversity",
    "prompt_adherence",
    "sdr",
    "si_sdr",
]
