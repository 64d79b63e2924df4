"""Subject fidelity and context preservation of personalised samples, measured in pixels.

The ``shapes`` world draws flat objects on flat backgrounds from a small palette, so what a personalised sample
got right can be read off the image itself rather than judged by a network:

- :func:`foreground_mask`: pixels that differ from the background colour (the object);
- :func:`mask_iou`: how well a sample's object covers the exact rendering of the subject in the asked context
  (silhouette, rotation, place and size together);
- :func:`centred_iou`: the same with the placement left out (silhouette, rotation and size);
- :func:`colour_share`: the share of the object's pixels whose nearest palette colour is one of the subject's;
- :func:`border_colour` and :func:`masked_psnr`: which background was drawn, and how much of the background two
  samples of the same seed share (context preservation against the base model).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

RGB = tuple[int, int, int]


def _image(image: np.ndarray, name: str = "image") -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"{name} must be an (H, W, 3) RGB array, got shape {array.shape}")
    return array.astype(np.float32)


def border_colour(image: np.ndarray) -> np.ndarray:
    """The median colour ``(3,)`` of the one-pixel border: the background of a flat-background image."""
    x = _image(image)
    border = np.concatenate([x[0], x[-1], x[1:-1, 0], x[1:-1, -1]])
    return np.median(border, axis=0)


def foreground_mask(
    image: np.ndarray, background: Sequence[float] | None = None, tolerance: float = 48.0
) -> np.ndarray:
    """``(H, W)`` bool: pixels whose largest channel difference from ``background`` (default: the border's median
    colour) exceeds ``tolerance`` (0..255)."""
    x = _image(image)
    bg = border_colour(image) if background is None else np.asarray(background, np.float32)
    return np.abs(x - bg).max(axis=2) > tolerance


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks of one shape (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"masks of shapes {a.shape} and {b.shape} cannot be compared; resize one first")
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def centred_iou(a: np.ndarray, b: np.ndarray) -> float:
    """:func:`mask_iou` after moving ``a`` by whole pixels so that its centroid lands on ``b``'s: silhouette, rotation
    and size agreement with the placement left out (0.0 when exactly one mask is empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"masks of shapes {a.shape} and {b.shape} cannot be compared; resize one first")
    if not a.any() or not b.any():
        return mask_iou(a, b)
    shift = np.rint(np.argwhere(b).mean(0) - np.argwhere(a).mean(0)).astype(int)
    moved = np.zeros_like(a)
    h, w = a.shape
    src = a[max(0, -shift[0]) : h - max(0, shift[0]), max(0, -shift[1]) : w - max(0, shift[1])]
    moved[max(0, shift[0]) : max(0, shift[0]) + src.shape[0], max(0, shift[1]) : max(0, shift[1]) + src.shape[1]] = src
    return mask_iou(moved, b)


def nearest_colour(image: np.ndarray, palette: Mapping[str, RGB]) -> np.ndarray:
    """``(H, W)`` array of palette names: each pixel's nearest colour (Euclidean in RGB)."""
    x = _image(image)
    names = list(palette)
    colours = np.asarray([palette[n] for n in names], np.float32)
    distance = ((x[:, :, None, :] - colours[None, None]) ** 2).sum(-1)
    return np.asarray(names, dtype=object)[distance.argmin(-1)]


def colour_share(image: np.ndarray, mask: np.ndarray, colours: Sequence[str], palette: Mapping[str, RGB]) -> float:
    """The share of ``mask``'s pixels whose nearest ``palette`` colour is in ``colours`` (0.0 for an empty mask)."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return 0.0
    return float(np.isin(nearest_colour(image, palette)[mask], list(colours)).mean())


def masked_psnr(a: np.ndarray, b: np.ndarray, keep: np.ndarray | None = None) -> float:
    """PSNR in dB (peak 255) of images ``a`` and ``b`` over the pixels where ``keep`` (all by default);
    ``inf`` where they agree exactly, NaN when nothing is kept."""
    x, y = _image(a, "a"), _image(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"images of shapes {x.shape} and {y.shape} cannot be compared")
    keep = np.ones(x.shape[:2], bool) if keep is None else np.asarray(keep, bool)
    if not keep.any():
        return math.nan
    mse = float(((x - y) ** 2)[keep].mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)
