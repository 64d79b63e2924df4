"""Checks of what users type into the app: limits, names, prompts, and the text boxes that hold lists.

Each check raises ``ValueError`` naming the field, the value received and what is allowed; the UI
shows the message as it is. The limits keep one CPU server responsive, not what the library allows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np

from studio.checks import check_choice, check_interval, check_number

MAX_IMAGES = 16
MAX_CLIPS = 4
MAX_MERGE = 4
MAX_APP_STEPS = 200
MAX_GUIDANCE = 30.0
MAX_PROMPT_CHARS = 500
MAX_SCALES = 8
MAX_PER_PROMPT = 8
MAX_ADAPTER_SCALE = 3.0
Modality = Literal["image", "audio"]
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def parse_overrides(text: str) -> list[str]:
    """``key=value`` lines of a text box (blank lines and ``#`` comments skipped).

    Raises:
        ValueError: for a line that is not ``key=value``.
    """
    items = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    bad = [item for item in items if "=" not in item or not item.partition("=")[0].strip()]
    if bad:
        raise ValueError(f"override {bad[0]!r} is not key=value; write one per line, e.g. max_steps=100")
    return items


def parse_scales(text: str) -> list[float]:
    """Guidance scales from text such as ``"1, 2, 4"`` or ``"1 2 4"``.

    Raises:
        ValueError: naming the item that is not a finite number >= 0.
    """
    values = []
    for item in re.split(r"[,\s]+", text.strip()):
        if not item:
            continue
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"guidance scale {item!r} is not a number; write e.g. 1, 2, 4") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"guidance scale {item!r} must be a finite number >= 0 (1 = no guidance)")
        values.append(value)
    if not values:
        raise ValueError("no guidance scales given; write e.g. 1, 2, 4")
    return values


def check_prompt(prompt: str) -> None:
    """A non-empty prompt of at most ``MAX_PROMPT_CHARS`` characters."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt is empty; give a text prompt such as 'a red circle'")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"prompt has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")


def check_negative_prompt(negative: str | None) -> None:
    """No negative prompt, or one of at most ``MAX_PROMPT_CHARS`` characters."""
    if negative is not None and (not isinstance(negative, str) or len(negative) > MAX_PROMPT_CHARS):
        size = len(negative) if isinstance(negative, str) else negative
        raise ValueError(f"negative prompt has {size} characters; the limit is {MAX_PROMPT_CHARS}")


def check_int(name: str, value: int, low: int, high: int) -> None:
    """An ``int`` (not a bool) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be a whole number from {low} to {high}, got {value!r}")


def check_sampling(steps: int, guidance: float, seed: int) -> None:
    """Sampler steps, guidance scale and seed within the app's limits."""
    check_int("steps", steps, 1, MAX_APP_STEPS)
    check_int("seed", seed, 0, 2**32 - 1)
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not 0 <= guidance <= MAX_GUIDANCE:
        raise ValueError(f"guidance must be a number from 0 to {MAX_GUIDANCE:g} (1 = no guidance), got {guidance!r}")


def check_adapter_scale(scale: float) -> None:
    """An adapter strength: a finite number with ``|scale| <= MAX_ADAPTER_SCALE`` (negative reverses the adapter)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not abs(scale) <= MAX_ADAPTER_SCALE:
        raise ValueError(
            f"adapter strength must be a number from {-MAX_ADAPTER_SCALE:g} to {MAX_ADAPTER_SCALE:g}, got {scale!r}"
        )


def check_scales(values: list[float]) -> list[float]:
    """1 to ``MAX_SCALES`` guidance scales, each a finite number from 0 to ``MAX_GUIDANCE``."""
    if not 1 <= len(values) <= MAX_SCALES:
        raise ValueError(f"give 1 to {MAX_SCALES} guidance scales, got {len(values)}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_GUIDANCE:
            raise ValueError(f"guidance scale {value!r} must be a number from 0 to {MAX_GUIDANCE:g} (1 = no guidance)")
    return [float(v) for v in values]


def check_name(name: str) -> None:
    """A folder name for ``runs/<name>``: 1-64 letters, digits, ``.``, ``_`` or ``-``, not starting with a dot."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"name {name!r} is not allowed; use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )


Progress = Callable[[float, str], None]
"""The app's progress callback: ``progress(fraction, description)``."""


def steps_reporter(progress: Progress | None, desc: str) -> Callable[[int, int], None] | None:
    """A :func:`studio.generate` progress callback (steps done of total) that reports fractions to ``progress``."""
    if progress is None:
        return None
    return lambda done, total: progress(min(1.0, done / total), desc)


def check_guidance_refinements(rescale: float, interval: tuple[float, float]) -> None:
    """Guidance rescale in [0, 1] and a guidance interval ``0 <= low < high <= 1`` (see ``studio.guidance``)."""
    check_number("guidance-rescale", rescale, 0, 1, meaning=" (0 = off)")
    check_interval("guidance-interval", interval)


def check_scheduler(name: str | None) -> None:
    """A sampler name the model's schedule can take, or None/empty for the saved one."""
    if name:
        from studio import SCHEDULERS

        check_choice("scheduler", name, SCHEDULERS)


#: Settings a training run started from the browser may not exceed (one CPU server, shared by its users).
TRAINING_LIMITS: dict[str, float] = {
    "max_steps": 100_000,
    "batch_size": 256,
    "class_samples": 512,
    "max_minutes": 24 * 60,
    "grid_steps": MAX_APP_STEPS,
    "sample_prompts": 64,
}
#: Settings that name a model: the browser sends a listed model's name, the app passes its folder.
MODEL_KEYS = ("base", "init")
#: Settings that name a folder: a path inside the app's working folder.
FOLDER_KEYS = ("data.dir",)


def check_training_overrides(
    items: list[str], resolve_model: Callable[[str], str], workdir: Path, cores: int
) -> list[str]:
    """The ``key=value`` overrides of a run started from the browser, checked and with names made paths.

    Args:
        items: the overrides as typed.
        resolve_model: a listed model's name -> its source (raises ValueError for an unlisted name).
        workdir: the app's working folder; folder settings must lie inside it.
        cores: CPU cores of the server (``num_workers`` may not exceed it).

    Raises:
        ValueError: for a model that is not listed, a folder outside the working folder, or a size over its limit.
    """
    checked = []
    for item in items:
        key, _, value = (part.strip() for part in item.partition("="))
        if key in MODEL_KEYS:
            value = resolve_model(value)
        elif key in FOLDER_KEYS:
            path = Path(value)
            inside = (workdir / path).resolve()
            if path.is_absolute() or ".." in path.parts or workdir.resolve() not in (inside, *inside.parents):
                raise ValueError(f"{key}={value!r}: give a folder inside the app's working folder, e.g. data/concept")
            if not inside.is_dir():
                raise ValueError(f"{key}={value!r} is not a folder in the app's working folder; upload it there first")
            value = str(inside)
        elif key in TRAINING_LIMITS or key == "num_workers":
            limit = cores if key == "num_workers" else TRAINING_LIMITS[key]
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"{key}={value!r} is not a number") from None
            if not 0 <= number <= limit:
                raise ValueError(f"{key}={value} is over the app's limit of {limit:g}; run bigger jobs with the CLI")
        checked.append(f"{key}={value}")
    return checked


def fit_subject(image: object, size: int) -> np.ndarray:
    """An uploaded subject picture as the ``(size, size, 3)`` uint8 reference a MoA reads: grey or RGBA made RGB
    (transparency over mid-grey, the references' background), the centre square cropped and resized.

    Raises:
        ValueError: for something that is not an image array.
    """
    from PIL import Image

    array = np.asarray(image) if image is not None else None
    if array is None or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        shape = None if array is None else array.shape
        raise ValueError(f"subject image of shape {shape} is not a picture; upload a PNG or JPEG of the subject")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
            raise ValueError("subject image holds values that are not finite numbers; upload a PNG or JPEG")
        scale = 255.0 if array.max() <= 1.0 else 1.0
        array = np.clip(np.rint(array.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    if array.ndim == 2 or array.shape[2] == 1:
        array = np.repeat(array.reshape(*array.shape[:2], 1), 3, axis=2)
    if array.shape[2] == 4:
        alpha = array[..., 3:].astype(np.float32) / 255
        array = np.rint(array[..., :3] * alpha + 128 * (1 - alpha)).astype(np.uint8)
    h, w = array.shape[:2]
    if min(h, w) < 8:
        raise ValueError(f"subject image is {w}x{h} pixels; upload one at least 8 pixels on each side")
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = Image.fromarray(np.ascontiguousarray(array[top : top + side, left : left + side]))
    return np.asarray(square.resize((size, size), Image.Resampling.LANCZOS))
