"""ShapesWorld: determinism, rendering that matches its labels, and a caption grammar that parses back."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from studio.worlds.base import Prompt, WorldDataset, _tokens
from studio.worlds.shapes import OBJECT_RGB, SIZE, ShapesWorld, coverage

WORLD = ShapesWorld()
EXPECTED_CELL = {
    "top left": (0, 0), "top": (1, 0), "top right": (2, 0),
    "left": (0, 1), "centre": (1, 1), "right": (2, 1),
    "bottom left": (0, 2), "bottom": (1, 2), "bottom right": (2, 2),
}  # fmt: skip
BASE = {"shape": "circle", "colour": "red", "size": "medium", "position": "centre", "background": "black"}


def render(seed: int = 0, **overrides: str) -> tuple[np.ndarray, dict]:
    return WORLD.render({**BASE, **overrides}, np.random.default_rng(seed))


def object_pixels(image: np.ndarray, fraction: float) -> np.ndarray:
    """``(32, 32)`` bool: pixels farther from the background (median colour) than ``fraction`` of the max distance."""
    pixels = image.astype(np.float32)
    distance = np.linalg.norm(pixels - np.median(pixels.reshape(-1, 3), axis=0), axis=-1)
    return distance > fraction * distance.max()


def ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def held_out_phrases() -> list[str]:
    return [p.text for values in WORLD.phrases.phrases.values() for ps in values.values() for p in ps
            if p.split == "held_out"]  # fmt: skip


# ---- determinism and format ---------------------------------------------------------------


def test_sample_is_deterministic_by_seed_and_varies_across_seeds() -> None:
    a, b, c = WORLD.sample(7), WORLD.sample(7), WORLD.sample(8)
    assert np.array_equal(a.data, b.data) and a.caption == b.caption and a.labels == b.labels
    assert not np.array_equal(a.data, c.data)
    assert len({WORLD.sample(s).caption for s in range(20)}) > 10


def test_sample_is_uint8_32x32_rgb_with_full_labels() -> None:
    sample = WORLD.sample(3)
    assert sample.data.shape == (SIZE, SIZE, 3) and sample.data.dtype == np.uint8
    assert set(sample.labels) == set(WORLD.attributes)
    assert sample.extras["mask"].shape == (SIZE, SIZE)


def test_world_dataset_yields_deterministic_image_tensors_in_unit_range() -> None:
    first = list(WorldDataset(WORLD, seed=5, num_samples=4))
    second = list(WorldDataset(WORLD, seed=5, num_samples=4))
    assert len(first) == 4
    for x, y in zip(first, second):
        assert x["data"].shape == (3, SIZE, SIZE) and x["data"].dtype == torch.float32
        assert x["data"].min() >= -1.0 and x["data"].max() <= 1.0
        assert torch.equal(x["data"], y["data"]) and x["caption"] == y["caption"]
    assert not torch.equal(first[0]["data"], first[1]["data"])


# ---- rendering matches labels -------------------------------------------------------------


@pytest.mark.parametrize("background", ["black", "white", "gray", "navy"])
def test_object_colour_is_nearest_to_the_requested_colour(background: str) -> None:
    names = list(OBJECT_RGB)
    base = np.array([OBJECT_RGB[n] for n in names], np.float32)
    for seed, (colour, shape) in enumerate(itertools.product(names, ("circle", "star", "ring"))):
        image, _ = render(seed, colour=colour, shape=shape, background=background, size="small")
        mean = image[object_pixels(image, 0.8)].astype(np.float32).mean(axis=0)
        nearest = names[int(np.linalg.norm(base - mean, axis=1).argmin())]
        assert nearest == colour, (colour, shape, background, mean)


@pytest.mark.parametrize("position", ShapesWorld.attributes["position"])
def test_object_centroid_lies_in_the_requested_cell(position: str) -> None:
    for seed, (shape, size) in enumerate(itertools.product(WORLD.attributes["shape"], ("small", "large"))):
        image, _ = render(seed, position=position, shape=shape, size=size)
        ys, xs = np.nonzero(object_pixels(image, 0.5))
        # Pixel i spans [i, i + 1); the thirds of the image are the position cells.
        cell = (int((xs.mean() + 0.5) * 3 / SIZE), int((ys.mean() + 0.5) * 3 / SIZE))
        assert cell == EXPECTED_CELL[position], (position, shape, size, cell)


def test_circle_area_grows_with_size_class() -> None:
    for seed in range(5):
        areas = [object_pixels(render(seed, size=s)[0], 0.5).sum() for s in ("small", "medium", "large")]
        assert areas[0] < areas[1] < areas[2], areas
        assert 60 < areas[0] < 110 and 250 < areas[2] < 400, areas


def test_coverage_is_antialiased_and_matches_the_analytic_area() -> None:
    mask = coverage("circle", 16.3, 15.8, 9.0, 0.0)
    assert abs(mask.sum() - math.pi * 81) < 0.01 * math.pi * 81
    assert ((mask > 0.05) & (mask < 0.95)).sum() > 20


def test_ring_has_a_hole_and_circle_does_not() -> None:
    for seed, size in enumerate(("small", "medium", "large")):
        ring, ring_extras = render(seed, shape="ring", size=size, background="white", colour="blue")
        disc, disc_extras = render(seed, shape="circle", size=size, background="white", colour="blue")
        for image, extras, is_object in ((ring, ring_extras, False), (disc, disc_extras, True)):
            x, y = (int(v) for v in extras["centre"])
            assert object_pixels(image, 0.5)[y, x] == is_object, (size, is_object)


def test_render_rejects_incomplete_or_unknown_labels() -> None:
    with pytest.raises(ValueError, match="miss attributes"):
        WORLD.render({"shape": "circle"}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="hexagon"):
        WORLD.render({**BASE, "shape": "hexagon"}, np.random.default_rng(0))


# ---- labels, captions and parsing ---------------------------------------------------------


def test_check_labels_names_the_allowed_values() -> None:
    with pytest.raises(ValueError, match=r"'circle', 'square'"):
        WORLD.check_labels({"shape": "hexagon"})
    with pytest.raises(ValueError, match=r"'background'"):
        WORLD.check_labels({"texture": "smooth"})
    assert WORLD.check_labels({"colour": "pink"}) == {"colour": "pink"}


@pytest.mark.parametrize("split", ["train", "held_out"])
def test_captions_parse_back_to_exactly_the_labels_they_name(split: str) -> None:
    named_counts = dict.fromkeys(WORLD.attributes, 0)
    for seed in range(300):
        rng = np.random.default_rng(seed)
        labels = WORLD.sample_labels(rng)
        prompt = WORLD.caption(labels, rng, split)
        assert WORLD.parse_prompt(prompt.text) == prompt.labels, prompt
        assert prompt.labels.items() <= labels.items() and ("colour" in prompt.labels or "shape" in prompt.labels)
        for attr in prompt.labels:
            named_counts[attr] += 1
    assert named_counts["colour"] > 250 and named_counts["shape"] > 250
    assert all(60 < named_counts[a] < 180 for a in ("size", "position", "background")), named_counts


def test_held_out_phrases_never_appear_in_train_captions() -> None:
    held = [tuple(_tokens(text)) for text in held_out_phrases()]
    assert len(held) >= len([v for values in WORLD.attributes.values() for v in values])
    for seed in range(500):
        tokens = _tokens(WORLD.sample(seed).caption)
        for phrase in held:
            assert phrase not in ngrams(tokens, len(phrase)), (phrase, tokens)


def test_background_words_only_parse_inside_background_phrases() -> None:
    assert WORLD.parse_prompt("a black and white picture of a navy circle") == {"shape": "circle"}
    assert WORLD.parse_prompt("a blue star on a navy background") == {
        "colour": "blue", "shape": "star", "background": "navy",
    }  # fmt: skip
    assert WORLD.parse_prompt("a big red box in the top left corner") == {
        "size": "large", "colour": "red", "shape": "square", "position": "top left",
    }  # fmt: skip


def test_eval_prompts_cover_every_colour_shape_pair_in_held_out_phrases() -> None:
    prompts = WORLD.eval_prompts()
    assert prompts == WORLD.eval_prompts() and len(prompts) == 48
    pairs = {(p.labels["colour"], p.labels["shape"]) for p in prompts}
    assert pairs == set(itertools.product(WORLD.attributes["colour"], WORLD.attributes["shape"]))
    held = {tuple(_tokens(text)) for text in held_out_phrases()}
    for prompt in prompts:
        assert WORLD.parse_prompt(prompt.text) == prompt.labels, prompt
        tokens = _tokens(prompt.text)
        assert sum(any(p in ngrams(tokens, n) for p in held if len(p) == n) for n in range(1, 6)) >= 1
    extra = [p for p in prompts if len(p.labels) > 2]
    assert 12 <= len(extra) <= 20
    assert {a for p in extra for a in p.labels} == set(WORLD.attributes)


def test_sample_for_prompt_honours_the_prompt_labels() -> None:
    for seed, prompt in enumerate(WORLD.eval_prompts()[:12]):
        sample = WORLD.sample_for_prompt(prompt, seed)
        assert prompt.labels.items() <= sample.labels.items()
        assert sample.caption == prompt.text
    prompt = Prompt(
        "an oversized violet-purple star shape in the top-right corner", {"size": "large", "colour": "purple"}
    )
    assert WORLD.sample_for_prompt(prompt, 1).labels["colour"] == "purple"
