"""A subject the ``shapes`` world never shows, for personalisation (DreamBooth-style) studies.

The concept is an orange crescent on a dark background: a shape outside the world's six (so the base model
has never drawn it and the judges have no class for it), in a colour the world has (so recolouring it is a
measurable edit). ``mixstudio world shapes --concept --n 8 --out concept/`` writes its training images.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from studio.worlds.shapes import BACKGROUND_RGB, OBJECT_RGB, SIZE, SUPERSAMPLE, _background, _object_colour

#: What the concept images look like, in the world's vocabulary (the shape has no word in it).
CONCEPT_COLOUR = "orange"
CONCEPT_BACKGROUND = "black"
#: The crescent: a disc of radius r minus a disc of radius ``_BITE·r`` shifted by ``_OFFSET·r``.
_BITE, _OFFSET = 0.8, 0.55
_RADIUS = (8.0, 10.0)
MAX_CONCEPT_IMAGES = 100


def crescent_coverage(cx: float, cy: float, radius: float, angle: float) -> np.ndarray:
    """Anti-aliased ``(SIZE, SIZE)`` float32 coverage of a crescent (4×4 sub-samples per pixel).

    Args:
        cx, cy: centre of the outer disc in pixels.
        radius: outer radius in pixels.
        angle: direction the bite is taken from, in radians.
    """
    step = 1.0 / SUPERSAMPLE
    grid = (np.arange(SIZE * SUPERSAMPLE) + 0.5) * step
    xs, ys = grid[None, :] - cx, grid[:, None] - cy
    bx, by = _OFFSET * radius * math.cos(angle), _OFFSET * radius * math.sin(angle)
    inside = (xs * xs + ys * ys <= radius * radius) & ((xs - bx) ** 2 + (ys - by) ** 2 > (_BITE * radius) ** 2)
    return inside.reshape(SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE).mean(axis=(1, 3), dtype=np.float32)


def render_concept(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` images ``(32, 32, 3)`` uint8 of the concept, jittered in size, place, bite direction and colour.

    Raises:
        ValueError: for ``n`` outside ``1..MAX_CONCEPT_IMAGES``.
    """
    if not 1 <= n <= MAX_CONCEPT_IMAGES:
        raise ValueError(f"--n must be between 1 and {MAX_CONCEPT_IMAGES} concept images, got {n}")
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        background = _background(BACKGROUND_RGB[CONCEPT_BACKGROUND], rng)
        colour = _object_colour(OBJECT_RGB[CONCEPT_COLOUR], rng)
        radius = float(rng.uniform(*_RADIUS))
        cx, cy = (SIZE / 2 + float(rng.uniform(-2.0, 2.0)) for _ in range(2))
        angle = float(rng.uniform(-math.pi / 4, math.pi / 4))  # the bite comes from the right, give or take
        mask = crescent_coverage(cx, cy, radius, angle)
        image = background + mask[..., None] * (colour - background)
        images.append(np.clip(np.rint(image), 0, 255).astype(np.uint8))
    return images


def write_concept(out: str | Path, n: int, seed: int = 0, force: bool = False) -> list[Path]:
    """Write :func:`render_concept`'s images as ``out/concept-NN.png`` (the folder replaced atomically).

    Returns:
        The written files, in order.
    """
    from studio.io import atomic_dir, write_png

    images = render_concept(n, seed)
    names = [f"concept-{i:02d}.png" for i in range(n)]
    with atomic_dir(out, force=force) as tmp:
        for name, image in zip(names, images, strict=True):
            write_png(tmp / name, image)
    return [Path(out) / name for name in names]
