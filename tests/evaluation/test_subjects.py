"""Pixel measures of personalised samples, on images built so that the right answer is known."""

import math

import numpy as np
import pytest

from studio.evaluation.subjects import (
    border_colour,
    centred_iou,
    colour_share,
    foreground_mask,
    mask_iou,
    masked_psnr,
    nearest_colour,
)
from studio.worlds.concept import Subject, render_subject
from studio.worlds.shapes import BACKGROUND_RGB, OBJECT_RGB

PALETTE = {**OBJECT_RGB, **BACKGROUND_RGB}


def square(colour=(220, 30, 30), background=(20, 28, 92), size=16, box=(4, 10, 2, 12)):
    image = np.empty((size, size, 3), np.uint8)
    image[:] = background
    top, bottom, left, right = box
    image[top:bottom, left:right] = colour
    return image


def test_foreground_mask_finds_the_drawn_square_whatever_the_background():
    for background in BACKGROUND_RGB.values():
        image = square(background=background)
        np.testing.assert_array_equal(border_colour(image), background)
        mask = foreground_mask(image)
        assert mask.sum() == 6 * 10 and mask[4:10, 2:12].all()
    faint = square(colour=(40, 40, 100))  # 20 levels from navy: below the tolerance, not an object
    assert not foreground_mask(faint).any()


def test_exact_renderings_of_a_subject_cover_their_own_mask():
    subject = Subject.parse("heart-stripes-red-yellow")
    place = {"size": "medium", "background": "navy", "jitter": False}
    image, coverage = render_subject(subject, np.random.default_rng(0), position="top left", **place)
    assert mask_iou(foreground_mask(image), coverage > 0.5) > 0.9
    moved, _ = render_subject(subject, np.random.default_rng(0), position="bottom right", **place)
    assert mask_iou(foreground_mask(moved), coverage > 0.5) < 0.1
    assert centred_iou(foreground_mask(moved), coverage > 0.5) > 0.9  # same silhouette, elsewhere
    other, _ = render_subject(Subject.parse("arrow-solid-red"), np.random.default_rng(0), **place,
                                           position="bottom right")  # fmt: skip
    assert centred_iou(foreground_mask(other), coverage > 0.5) < 0.6
    assert colour_share(image, coverage > 0.5, ["red", "yellow"], PALETTE) > 0.7  # stripe edges blend to orange
    assert colour_share(image, coverage > 0.5, ["blue"], PALETTE) < 0.05


def test_iou_share_and_psnr_on_constructed_cases():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2], b[1:3] = True, True
    assert mask_iou(a, b) == pytest.approx(4 / 12) and mask_iou(a, a) == 1.0
    assert mask_iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    c = np.zeros((4, 4), bool)
    c[2:4, 1:3] = True  # a 2x2 block at the bottom; centred on the top-left block it covers it exactly
    block = np.zeros((4, 4), bool)
    block[:2, :2] = True
    assert mask_iou(c, block) == 0.0 and centred_iou(c, block) == 1.0
    assert centred_iou(c, a) == pytest.approx(4 / 8)  # a's 2x4 rows: half covered once centred
    assert centred_iou(np.zeros((4, 4), bool), block) == 0.0
    with pytest.raises(ValueError, match="cannot be compared"):
        mask_iou(a, np.zeros((3, 3)))
    image = square()
    names = nearest_colour(image, PALETTE)
    assert names[0, 0] == "navy" and names[5, 5] == "red"
    half = np.zeros(image.shape[:2], bool)
    half[4:10, 2:7] = True  # red only
    half[0, :] = True  # plus 16 navy pixels
    assert colour_share(image, half, ["red"], PALETTE) == pytest.approx(30 / 46)
    assert colour_share(image, np.zeros_like(half), ["red"], PALETTE) == 0.0
    other = image.copy()
    other[0, 0] = other[0, 0] + np.array([10, 0, 0], np.uint8)
    assert masked_psnr(image, image) == math.inf
    expected = 10 * math.log10(255**2 / (100 / 3 / 256))
    assert masked_psnr(image, other) == pytest.approx(expected, rel=1e-5)
    keep = np.ones(image.shape[:2], bool)
    keep[0, 0] = False
    assert masked_psnr(image, other, keep) == math.inf
    assert math.isnan(masked_psnr(image, other, np.zeros_like(keep)))
    with pytest.raises(ValueError, match=r"must be an \(H, W, 3\) RGB array"):
        masked_psnr(image[..., 0], image[..., 0])
