"""Tests for the ``synth`` world: rendering, stems, music content, captions and parsing."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from studio.worlds.base import Prompt, WorldDataset, _tokens
from studio.worlds.synth import KEYS, TEMPO_BPM, SynthWorld

WORLD = SynthWorld()
FULL = {"tempo": "medium", "key": "D", "mode": "minor", "lead": "organ", "drums": "rock", "bass": "pulsing"}


def _labels(seed: int, **fixed: str) -> dict[str, str]:
    return WORLD.sample_labels(np.random.default_rng(seed), fixed)


def _render(labels: dict[str, str], seed: int) -> tuple[np.ndarray, dict]:
    return WORLD.render(labels, np.random.default_rng(seed))


def _chroma(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """Spectral energy between ``low`` and ``high`` Hz folded onto the 12 pitch classes (0 = C)."""
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / WORLD.SAMPLE_RATE)
    band = (freqs > low) & (freqs < high)
    pitch_classes = np.round(12 * np.log2(freqs[band] / 440.0) + 69).astype(int) % 12
    return np.bincount(pitch_classes, power[band], minlength=12)


def _matched_phrases(text: str) -> list[tuple[tuple[str, ...], str]]:
    """The phrases the parser's longest-match scan consumes in ``text``, with their split."""
    split_of = {
        tuple(_tokens(p.text)): p.split
        for values in WORLD.phrases.phrases.values()
        for phrases in values.values()
        for p in phrases
    }
    longest = max(map(len, split_of))
    tokens, found, i = _tokens(text), [], 0
    while i < len(tokens):
        for n in range(min(longest, len(tokens) - i), 0, -1):
            key = tuple(tokens[i : i + n])
            if key in split_of:
                found.append((key, split_of[key]))
                i += n
                break
        else:
            i += 1
    return found


# ---- rendering -----------------------------------------------------------------------------------------
def test_sample_is_deterministic_by_seed():
    a, b, c = WORLD.sample(7), WORLD.sample(7), WORLD.sample(8)
    np.testing.assert_array_equal(a.data, b.data)
    for name in ("drums", "bass", "lead"):
        np.testing.assert_array_equal(a.extras["stems"][name], b.extras["stems"][name])
    assert a.caption == b.caption and a.labels == b.labels and a.extras["bpm"] == b.extras["bpm"]
    assert not np.array_equal(a.data, c.data)
    # Same labels, different seed: within-prompt diversity, not a fixed clip per label set.
    assert not np.array_equal(_render(FULL, 1)[0], _render(FULL, 2)[0])


@pytest.mark.parametrize("seed", range(8))
def test_mixture_is_sum_of_stems_and_never_clips(seed: int):
    sample = WORLD.sample(seed)
    stems = sample.extras["stems"]
    assert sample.data.shape == (WORLD.NUM_SAMPLES,) and sample.data.dtype == np.float32
    assert set(stems) == {"drums", "bass", "lead"}
    assert all(s.shape == (WORLD.NUM_SAMPLES,) and s.dtype == np.float32 for s in stems.values())
    np.testing.assert_allclose(sample.data, stems["drums"] + stems["bass"] + stems["lead"], rtol=0, atol=1e-6)
    assert 0.85 <= np.abs(sample.data).max() <= 1.0
    assert isinstance(sample.extras["bpm"], float)


@pytest.mark.parametrize("drums", ["none", "rock", "disco", "halftime"])
def test_drum_stem_is_silent_iff_no_drums(drums: str):
    for seed in range(3):
        _, extras = _render({**FULL, "drums": drums}, seed)
        peak = np.abs(extras["stems"]["drums"]).max()
        assert (peak == 0.0) if drums == "none" else (peak > 0.05)


def test_lead_and_bass_are_audible_in_the_mix():
    for seed in range(12):
        sample = WORLD.sample(seed)
        mix_rms = np.sqrt(np.mean(sample.data**2))
        for name in ("bass", "lead"):
            assert np.sqrt(np.mean(sample.extras["stems"][name] ** 2)) > 0.3 * mix_rms, (seed, name)


# ids avoid the bare word "slow", which conftest reads as the slow-test marker.
@pytest.mark.parametrize("tempo", ["slow", "medium", "fast"], ids=lambda t: f"tempo_{t}")
def test_bpm_lies_in_its_band_and_is_heard_on_the_beat_grid(tempo: str):
    low, high = TEMPO_BPM[tempo]
    for seed in range(4):
        _, extras = _render({**FULL, "tempo": tempo, "bass": "pulsing", "drums": "none"}, seed)
        bpm = extras["bpm"]
        assert low <= bpm <= high
        # Pulsing bass plays gated eighths: its onsets must be spaced by half a beat of that bpm.
        # Envelope: peak |x| over 24 ms windows (longer than a bass period) every 2 ms.
        windows = np.lib.stride_tricks.sliding_window_view(np.abs(extras["stems"]["bass"]), 384)[::32]
        envelope = windows.max(axis=1)
        on = envelope > 0.3 * envelope.max()
        onsets = np.flatnonzero(on[1:] & ~on[:-1]) + 1
        assert len(onsets) >= 4
        interval_s = np.mean(np.diff(onsets)) * 32 / WORLD.SAMPLE_RATE
        assert interval_s == pytest.approx(30.0 / bpm, rel=0.03)


@pytest.mark.parametrize("bass", ["sustained", "pulsing", "walking"])
def test_bass_stem_is_rooted_on_the_key(bass: str):
    for i, key in enumerate(KEYS):
        _, extras = _render(_labels(i, key=key, bass=bass), seed=100 + i)
        chroma = _chroma(extras["stems"]["bass"], 55.0, 500.0)
        assert KEYS[int(np.argmax(chroma))] == key


def test_lead_third_decides_the_mode():
    for seed in range(24):
        labels = _labels(seed)
        _, extras = _render(labels, seed)
        chroma, root = _chroma(extras["stems"]["lead"], 200.0, 1100.0), KEYS.index(labels["key"])
        major_third_louder = chroma[(root + 4) % 12] > chroma[(root + 3) % 12]
        assert major_third_louder == (labels["mode"] == "major"), labels


def test_a_mode_contrast_pair_is_one_tune_in_major_and_minor():
    for seed in range(6):
        a, b = WORLD.contrast_pair(seed, "mode")
        assert {a.labels["mode"], b.labels["mode"]} == {"major", "minor"}
        assert {k: v for k, v in a.labels.items() if k != "mode"} == {k: v for k, v in b.labels.items() if k != "mode"}
        assert WORLD.parse_prompt(a.caption)["mode"] == a.labels["mode"]
        assert WORLD.parse_prompt(b.caption)["mode"] == b.labels["mode"]
        assert a.extras["bpm"] == b.extras["bpm"]  # every draw that mode does not touch is shared
        np.testing.assert_array_equal(a.extras["stems"]["drums"] != 0, b.extras["stems"]["drums"] != 0)
        chroma = [_chroma(s.extras["stems"]["lead"], 200.0, 1100.0) for s in (a, b)]
        root = KEYS.index(a.labels["key"])
        for c, sample in zip(chroma, (a, b), strict=True):
            assert (c[(root + 4) % 12] > c[(root + 3) % 12]) == (sample.labels["mode"] == "major")
    assert WORLD.contrast_pair(3, "mode")[0].caption == WORLD.contrast_pair(3, "mode")[0].caption


def test_contrast_pair_refuses_an_unknown_attribute():
    with pytest.raises(ValueError, match="cannot contrast synth attribute 'colour'"):
        WORLD.contrast_pair(0, "colour")


def test_render_rejects_incomplete_or_unknown_labels():
    with pytest.raises(ValueError, match="miss attributes"):
        _render({"tempo": "fast"}, 0)
    with pytest.raises(ValueError, match="'lead'"):
        _render({**FULL, "lead": "guitar"}, 0)


# ---- vocabulary and labels ---------------------------------------------------------------------------
def test_describe_matches_attributes():
    assert WORLD.describe() == {
        "tempo": ["slow", "medium", "fast"],
        "key": ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"],
        "mode": ["major", "minor"],
        "lead": ["pluck", "organ", "square", "pad", "bell"],
        "drums": ["none", "rock", "disco", "halftime"],
        "bass": ["sustained", "pulsing", "walking"],
    }
    assert (WORLD.name, WORLD.modality, WORLD.SAMPLE_RATE, WORLD.NUM_SAMPLES) == ("synth", "audio", 16000, 32768)


def test_check_labels_rejects_unknown_attribute_and_value():
    with pytest.raises(ValueError, match="unknown synth attribute 'colour'"):
        WORLD.check_labels({"colour": "red"})
    with pytest.raises(ValueError, match=r"unknown value 'jazz'.*'drums'"):
        WORLD.check_labels({"drums": "jazz"})
    assert WORLD.check_labels({"key": "C#"}) == {"key": "C#"}


def test_sample_for_prompt_honours_the_prompt():
    prompt = Prompt(
        "a fast-paced sad-sounding piece led by a bell-like line", {"tempo": "fast", "mode": "minor", "lead": "bell"}
    )
    for seed in range(3):
        sample = WORLD.sample_for_prompt(prompt, seed)
        assert sample.caption == prompt.text
        assert {k: sample.labels[k] for k in prompt.labels} == prompt.labels
        assert TEMPO_BPM["fast"][0] <= sample.extras["bpm"] <= TEMPO_BPM["fast"][1]


def test_sample_with_fixed_labels_renders_those_labels():
    sample = WORLD.sample(3, fixed=FULL)
    assert sample.labels == FULL
    assert WORLD.parse_prompt(sample.caption).items() <= FULL.items()


# ---- captions and parsing ----------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["train", "held_out"])
def test_captions_parse_back_to_the_labels_they_name(split: str):
    named_sets = collections.Counter()
    for seed in range(250):
        rng = np.random.default_rng(seed)
        labels = WORLD.sample_labels(rng)
        prompt = WORLD.caption(labels, rng, split)
        assert WORLD.parse_prompt(prompt.text) == prompt.labels, prompt.text
        assert prompt.labels.items() <= labels.items()
        assert len(prompt.labels) >= 2 and {"tempo", "mode", "lead"} & prompt.labels.keys(), prompt
        named_sets[len(prompt.labels)] += 1
    assert named_sets[len(WORLD.attributes)] > 0 and named_sets[2] > 0


def test_held_out_phrases_never_appear_in_train_captions():
    held_out = {
        tuple(_tokens(p.text))
        for values in WORLD.phrases.phrases.values()
        for phrases in values.values()
        for p in phrases
        if p.split == "held_out"
    }
    assert all(len(WORLD.phrases.choices(a, v, "held_out")) >= 1 for a, vs in WORLD.attributes.items() for v in vs)
    for seed in range(500):
        rng = np.random.default_rng(seed)
        tokens = _tokens(WORLD.caption(WORLD.sample_labels(rng), rng, "train").text)
        windows = {tuple(tokens[i : i + n]) for n in range(1, 6) for i in range(len(tokens) - n + 1)}
        assert not windows & held_out, tokens
        assert all(split == "train" for _, split in _matched_phrases(" ".join(tokens)))


def test_single_letter_a_is_not_a_key_but_in_a_is():
    assert WORLD.parse_prompt("a fast tune") == {"tempo": "fast"}
    assert WORLD.parse_prompt("a slow tune in a minor") == {"tempo": "slow", "key": "A", "mode": "minor"}
    assert WORLD.parse_prompt("pad in c sharp major") == {"lead": "pad", "key": "C#", "mode": "major"}
    assert WORLD.parse_prompt("centred on a sharp") == {"key": "A#"}
    assert WORLD.parse_prompt("rooted in a, minor-key") == {"key": "A", "mode": "minor"}


def test_eval_prompts_are_fixed_held_out_and_cover_every_value():
    prompts = WORLD.eval_prompts()
    assert prompts == WORLD.eval_prompts()
    assert 24 <= len(prompts) <= 36 and len({p.text for p in prompts}) == len(prompts)
    counts = collections.Counter((a, v) for p in prompts for a, v in p.labels.items())
    for attr in ("tempo", "mode", "lead", "drums"):
        assert all(counts[(attr, v)] >= 3 for v in WORLD.attributes[attr]), attr
    for prompt in prompts:
        WORLD.check_labels(prompt.labels)
        assert 2 <= len(prompt.labels) <= 4
        assert WORLD.parse_prompt(prompt.text) == prompt.labels, prompt.text
        matched = _matched_phrases(prompt.text)
        assert len(matched) == len(prompt.labels) and all(split == "held_out" for _, split in matched), prompt.text


def test_caption_rejects_unknown_split():
    with pytest.raises(ValueError, match="split must be"):
        WORLD.caption(FULL, np.random.default_rng(0), "test")


# ---- dataset -----------------------------------------------------------------------------------------
def test_world_dataset_is_deterministic():
    first = list(WorldDataset(WORLD, seed=5, num_samples=3))
    again = list(WorldDataset(WORLD, seed=5, num_samples=3))
    other = list(WorldDataset(WORLD, seed=6, num_samples=3))
    assert [item["index"] for item in first] == [0, 1, 2]
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a["data"], b["data"]) and a["caption"] == b["caption"] and a["labels"] == b["labels"]
        assert a["data"].shape == (WORLD.NUM_SAMPLES,) and a["data"].dtype == torch.float32
    assert not torch.equal(first[0]["data"], other[0]["data"])
