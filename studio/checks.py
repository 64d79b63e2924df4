"""Checks of what a user typed, at the boundary that received it (CLI flags, ``--set`` fields, app inputs).

The library below these boundaries raises plain ``ValueError``s in its own argument names (``guidance_scale``);
the boundary checks the user's values first, in the user's words (``--guidance`` on the command line, ``guidance``
in the app), so a bad value is refused before any work starts and the message names what the user typed.

Each check raises ``ValueError`` with one line: the input's name, the value received, what is allowed, and, where
it helps, the fix.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

#: ``torch.Generator.manual_seed`` takes 64-bit seeds; sample ``k`` of prompt ``p`` adds ``1000·p + k``.
MAX_SEED = 2**63 - 2**32


def is_number(value: Any) -> bool:
    """An ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(name: str, value: Any, low: int, high: int) -> int:
    """A whole number in ``[low, high]`` (a float with no fractional part counts; a bool does not)."""
    whole = is_number(value) and math.isfinite(value) and float(value).is_integer()
    if not whole or not low <= value <= high:
        raise ValueError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return int(value)


def check_number(
    name: str, value: Any, low: float | None = None, high: float | None = None, *, meaning: str = ""
) -> float:
    """A finite number in ``[low, high]`` (either bound may be open: None).

    Args:
        meaning: words appended to the allowed range, e.g. ``" (1 = no guidance)"``.
    """
    ok = is_number(value) and math.isfinite(value)
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        if low is not None and high is not None:
            allowed = f"a finite number from {low:g} to {high:g}"
        elif low is not None:
            allowed = f"a finite number >= {low:g}"
        elif high is not None:
            allowed = f"a finite number <= {high:g}"
        else:
            allowed = "a finite number"
        raise ValueError(f"{name} must be {allowed}{meaning}, got {value!r}")
    return float(value)


def check_interval(name: str, value: Any) -> tuple[float, float]:
    """Two numbers ``low < high`` within ``[0, 1]`` (noise levels ``t / T``)."""
    pair = tuple(value) if isinstance(value, (tuple, list)) else ()
    ok = len(pair) == 2 and all(is_number(x) and math.isfinite(x) for x in pair)
    if not ok or not 0.0 <= pair[0] < pair[1] <= 1.0:
        raise ValueError(f"{name} must satisfy 0 <= LOW < HIGH <= 1 (noise levels t/T), got {value!r}")
    return float(pair[0]), float(pair[1])


def check_choice(name: str, value: Any, allowed: Iterable[str]) -> str:
    """One of ``allowed``."""
    allowed = sorted(allowed)
    if value not in allowed:
        raise ValueError(f"{name} {value!r} is unknown; use one of {allowed}")
    return value


def check_text(name: str, value: Any, max_chars: int, *, example: str) -> str:
    """Non-blank text of at most ``max_chars`` characters."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} is empty; give a text {name} such as {example!r}")
    if len(value) > max_chars:
        raise ValueError(f"{name} has {len(value)} characters; the limit is {max_chars}")
    return value


def check_seed(name: str, value: Any) -> int:
    """A seed in ``[0, MAX_SEED]``."""
    if not is_number(value) or not float(value).is_integer() or not 0 <= value <= MAX_SEED:
        raise ValueError(f"{name} must be a whole number from 0 to 2**63 - 2**32, got {value!r}")
    return int(value)
