"""Finiteness guards: a NaN or inf in samples, losses, gradients or saved weights stops the work with one line.

A result that is not finite is an error, never a file: an all-black PNG from a blown-up guidance scale, an
adapter full of NaN saved after a diverged step, a merge whose weights overflow. Each guard names what went
wrong, where, and what to change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def is_finite(value: Any) -> bool:
    """Whether a number, array, tensor, or mapping/sequence of them holds only finite values."""
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value).all()) if value.is_floating_point() or value.is_complex() else True
    if isinstance(value, np.ndarray):
        return bool(np.isfinite(value).all()) if np.issubdtype(value.dtype, np.inexact) else True
    if isinstance(value, Mapping):
        return all(is_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(is_finite(v) for v in value)
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    return True


def check_finite(value: Any, what: str, fix: str) -> None:
    """Raise ``ValueError("<what> is not finite (NaN or inf); <fix>")`` unless ``value`` is finite everywhere.

    For a mapping of tensors (a state dict) the message names the first entry that is not finite.
    """
    if is_finite(value):
        return
    if isinstance(value, Mapping):
        bad = next(k for k, v in value.items() if not is_finite(v))
        what = f"{what} ({bad!r})"
    raise ValueError(f"{what} is not finite (NaN or inf); {fix}")


def largest_magnitude(state: Mapping[str, torch.Tensor]) -> float:
    """The largest ``|value|`` in a state dict (0 for an empty one)."""
    return max((float(t.abs().max()) for t in state.values() if t.numel() and t.is_floating_point()), default=0.0)
