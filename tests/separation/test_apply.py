import numpy as np
import pytest
import torch

from studio.separation import overlap_add, separate
from studio.worlds import get_world, sample_seed


@pytest.mark.parametrize(("length", "segment", "overlap"), [(10_007, 1000, 0.25), (999, 1000, 0.25), (5000, 1000, 0.0),
                                                           (4321, 333, 0.9), (1, 64, 0.5)])  # fmt: skip
def test_overlap_add_of_an_identity_reconstructs_the_input_exactly(length, segment, overlap):
    torch.manual_seed(0)
    mix = torch.randn(2, 1, length)
    calls = []
    out = overlap_add(lambda x: x[:, None], mix, segment, overlap, progress=lambda done, total: calls.append(done))
    assert out.shape == (2, 1, 1, length)
    torch.testing.assert_close(out[:, 0], mix, atol=1e-6, rtol=0)
    assert calls == list(range(1, len(calls) + 1)) and (length > segment) == (len(calls) > 1)


def test_separate_with_a_gain_separator_is_exact_including_the_ragged_tail(gain_separator):
    model = gain_separator(gains=(1.0, -0.5), segment_samples=4000)
    audio = np.random.default_rng(0).uniform(-1, 1, (1, 4000 * 7 + 123)).astype(np.float32)
    stems = separate(model, audio, 16_000)
    assert list(stems) == ["a", "b"] and all(isinstance(s, np.ndarray) for s in stems.values())
    np.testing.assert_allclose(stems["a"], audio, atol=1e-6, rtol=0)
    np.testing.assert_allclose(stems["b"], -0.5 * audio, atol=1e-6, rtol=0)


def _synth_track(clips: int) -> tuple[np.ndarray, list[np.ndarray]]:
    world = get_world("synth")
    parts = [world.sample(sample_seed(99, i)).data for i in range(clips)]
    return np.concatenate(parts)[None], parts


def test_segmented_20s_matches_each_clip_separated_alone_for_a_short_filter(fir_separator):
    """A 20 s track of ten synth clips, separated in 2 s chunks, against each clip separated on its own.

    The test model is a linear time-invariant filter with a 32-sample reach either side, so the two agree
    exactly except (a) within 32 samples of a clip border, where the filter sees the neighbouring clip in one
    and silence in the other, and (b) near chunk edges, where overlap-add cross-fades two chunks: the chunk
    whose edge it is carries at most 32 / 16000 of the triangular weight there. Without overlap the chunk
    edges are hard cuts and the same comparison fails.
    """
    model = fir_separator(radius=32, segment_samples=32_000)
    track, parts = _synth_track(10)
    margin = np.zeros(track.shape[-1], dtype=bool)
    borders = np.cumsum([len(p) for p in parts])[:-1]
    for b in borders:
        margin[b - 32 : b + 32] = True
    alone = {name: np.concatenate([separate(model, p[None], 16_000)[name] for p in parts], axis=-1)
             for name in model.sources}  # fmt: skip
    peak = max(np.abs(s).max() for s in alone.values())
    for overlap, within in ((0.25, True), (0.0, False)):
        chunked = separate(model, track, 16_000, segment=2.0, overlap=overlap)
        worst = max(np.abs(chunked[n] - alone[n])[..., ~margin].max() for n in model.sources)
        assert (worst < 0.005 * peak) == within, (overlap, worst / peak)


def test_segmented_equals_whole_signal_away_from_chunk_edges(fir_separator):
    model = fir_separator(radius=32, segment_samples=16_000)
    track, _ = _synth_track(5)
    whole = model(torch.from_numpy(track)[None])[0]  # (S, 1, T)
    chunked = separate(model, torch.from_numpy(track), 16_000, overlap=0.25)
    stride = int(0.75 * 16_000)
    edges = [e for start in range(0, track.shape[-1], stride) for e in (start, start + 16_000)]
    near = torch.zeros(track.shape[-1], dtype=torch.bool)
    for e in edges:
        near[max(0, e - 32) : e + 32] = True
    for s, name in enumerate(model.sources):
        diff = (chunked[name] - whole[s]).abs()[0]
        assert diff[~near].max() < 1e-6
        assert 0 < diff[near].max() < 0.005 * whole.abs().max()


def test_resampling_round_trip_returns_band_limited_audio(gain_separator):
    model = gain_separator(gains=(1.0, 0.0), segment_samples=16_000)
    rate = 44_100
    t = np.arange(2 * rate) / rate
    tone = sum(np.sin(2 * np.pi * f * t + f) for f in (220.0, 1000.0, 3500.0)) / 3
    audio = (tone * np.hanning(t.size))[None].astype(np.float32)  # faded in and out, so no edge clicks
    stems = separate(model, audio, rate)
    assert stems["a"].shape == audio.shape
    assert np.abs(stems["a"] - audio).max() < 2e-3
    assert np.abs(stems["b"]).max() == 0.0


def test_channels_follow_the_model(gain_separator):
    stereo = torch.stack([torch.linspace(-1, 1, 3000), torch.linspace(1, -1, 3000)])
    mono_model = gain_separator(gains=(1.0, 0.5))
    out = separate(mono_model, stereo, 16_000)
    assert isinstance(out["a"], torch.Tensor) and out["a"].shape == (2, 3000)
    torch.testing.assert_close(out["b"], 0.5 * stereo, atol=1e-6, rtol=0)  # each channel separately
    stereo_model = gain_separator(audio_channels=2)
    out = separate(stereo_model, stereo[:1], 16_000)  # mono in: duplicated, then averaged back
    torch.testing.assert_close(out["a"], stereo[:1], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="takes 2 channels but the audio has 3"):
        separate(stereo_model, torch.zeros(3, 100), 16_000)


@pytest.mark.parametrize(
    ("audio", "rate", "error", "match"),
    [
        (np.zeros((1, 0), np.float32), 16_000, ValueError, "empty"),
        (np.zeros((0, 100), np.float32), 16_000, ValueError, "empty"),
        (np.array([[0.0, np.nan, 0.0]], np.float32), 16_000, ValueError, "NaN/inf.*sample 1"),
        (np.array([[0.0, 0.0], [0.0, np.inf]]), 16_000, ValueError, "channel 1, sample 1"),
        (np.zeros((1, 100), np.float32), 16, ValueError, r"sample_rate must be in \[1000"),
        (np.zeros((1, 100), np.float32), 10**7, ValueError, "sample_rate"),
        (np.zeros((1, 100), np.float32), 44_100.0, TypeError, "integer"),
        (np.zeros((100,), np.float32), 16_000, ValueError, r"audio\[None\]"),
        (np.zeros((48_000, 2), np.float32), 16_000, ValueError, "audio.T"),
        (np.zeros((1, 100), np.int16), 16_000, TypeError, "int16 divide by 32768"),
        ([[0.0, 0.1]], 16_000, TypeError, "numpy array or a torch tensor"),
    ],
)
def test_bad_input_is_refused_with_the_fix(gain_separator, audio, rate, error, match):
    with pytest.raises(error, match=match):
        separate(gain_separator(), audio, rate)


def test_bad_segment_and_overlap_are_refused(gain_separator):
    with pytest.raises(ValueError, match="overlap"):
        separate(gain_separator(), np.zeros((1, 100), np.float32), 16_000, overlap=1.0)
    with pytest.raises(ValueError, match="segment"):
        separate(gain_separator(), np.zeros((1, 100), np.float32), 16_000, segment=0.0)


@pytest.mark.parametrize("rate", [16_000, 44_100])
def test_silence_separates_into_silence_with_real_models(tiny_bsrnn, tiny_hdemucs, rate):
    silence = np.zeros((2, 3 * rate), np.float32)
    for model in (tiny_bsrnn, tiny_hdemucs):
        stems = separate(model, silence, rate, segment=1.0)
        assert list(stems) == ["drums", "bass", "lead"]
        assert all(s.shape == silence.shape and not np.any(s) for s in stems.values())
