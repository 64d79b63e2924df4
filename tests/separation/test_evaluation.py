"""SDR metrics against mir_eval (a test dependency, pinned in requirements.lock) and against first principles."""

import warnings

import numpy as np
import pytest
import torch

from studio.evaluation.separation import (
    bss_eval_v4,
    frame_median,
    frames,
    ideal_ratio_mask,
    mixture_as_estimate,
    museval_sdr,
    new_sdr,
    separation_scores,
    si_sdr,
    si_sdr_improvement,
)
from studio.worlds import get_world, sample_seed


def _random_sources(rng, shape, leak=0.2, noise=0.3):
    refs = rng.standard_normal(shape)
    ests = refs + leak * np.roll(refs, 1, axis=0) + noise * rng.standard_normal(shape)
    return refs, ests


def _mir_eval_images(refs, ests):
    """mir_eval wants (S, T, C); it warns that bss_eval_images is deprecated from 0.8 (removed in 0.9)."""
    mir_eval_separation = pytest.importorskip("mir_eval.separation")  # a test dependency: mir_eval==0.8.2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mir_eval_separation.bss_eval_images(
            np.moveaxis(refs, 1, 2), np.moveaxis(ests, 1, 2), compute_permutation=False
        )[:4]


@pytest.mark.parametrize(("sources", "channels", "length"), [(3, 1, 6000), (2, 2, 3000)])
def test_whole_signal_v4_matches_mir_eval_bss_eval_images(sources, channels, length):
    refs, ests = _random_sources(np.random.default_rng(sources), (sources, channels, length))
    ours = bss_eval_v4(refs, ests, 16_000, window_seconds=None)
    theirs = _mir_eval_images(refs, ests)
    for name, expected in zip(("sdr", "isr", "sir", "sar"), theirs):
        np.testing.assert_allclose(getattr(ours, name)[:, 0], expected, atol=1e-6, rtol=0, err_msg=name)
    # the comparison can fail: the metrics separate leakage from noise
    assert np.all(np.abs(ours.sir[:, 0] - ours.sar[:, 0]) > 0.5)


def _brute_force_v4(refs, ests, window, taps):
    """museval's v4 from scratch: explicit delayed-reference matrices and lstsq, filters from the whole signal."""
    nsrc, nchan, length = refs.shape

    def delayed(x):  # (C, n) -> (n + taps - 1, C * taps): column (c, l) is x[c] delayed by l
        n = x.shape[-1]
        cols = [
            np.concatenate([np.zeros(lag), x[c], np.zeros(taps - 1 - lag)])
            for c in range(nchan)
            for lag in range(taps)
        ]
        return np.stack(cols, axis=1).reshape(n + taps - 1, -1)

    def pad(x):
        return np.pad(x, ((0, 0), (0, taps - 1)))

    everyone = np.concatenate([delayed(r) for r in refs], axis=1)
    result = np.full((4, nsrc, len(frames(length, window, window))), np.nan)
    for j in range(nsrc):
        target = pad(ests[j]).T  # (n + taps - 1, C)
        all_f = np.linalg.lstsq(everyone, target, rcond=None)[0]
        own_f = np.linalg.lstsq(delayed(refs[j]), target, rcond=None)[0]
        for t, win in enumerate(frames(length, window, window)):
            window_all = np.concatenate([delayed(r[:, win]) for r in refs], axis=1)
            s_true = pad(refs[j][:, win]).T
            e_spat = delayed(refs[j][:, win]) @ own_f - s_true
            e_interf = window_all @ all_f - s_true - e_spat
            e_artif = pad(ests[j][:, win]).T - s_true - e_spat - e_interf
            db = lambda a, b: 10 * np.log10(np.sum(a**2) / np.sum(b**2))  # noqa: E731
            result[:, j, t] = (db(s_true, e_spat + e_interf + e_artif), db(s_true, e_spat),
                               db(s_true + e_spat, e_interf), db(s_true + e_spat + e_interf, e_artif))  # fmt: skip
    return result


def test_framewise_v4_matches_a_brute_force_least_squares_reference():
    refs, ests = _random_sources(np.random.default_rng(7), (2, 2, 2500))
    ours = bss_eval_v4(refs, ests, sample_rate=1000, window_seconds=1.0, filters_len=8)
    reference = _brute_force_v4(refs, ests, window=1000, taps=8)
    assert ours.sdr.shape == (2, 2)  # 2500 samples in 1000-sample windows: the 500-sample tail is not scored
    for k, name in enumerate(("sdr", "isr", "sir", "sar")):
        np.testing.assert_allclose(getattr(ours, name), reference[k], atol=1e-6, rtol=0, err_msg=name)


def test_v4_sdr_is_the_framewise_ratio_that_museval_sdr_computes():
    refs, ests = _random_sources(np.random.default_rng(3), (3, 1, 40_000))
    full = bss_eval_v4(refs, ests, 16_000)
    fast = museval_sdr(refs, ests, 16_000)
    assert fast.shape == (3, 2)
    np.testing.assert_allclose(full.sdr, fast, atol=1e-8, rtol=0)


def test_museval_framing_and_silence_conventions():
    assert frames(2500, 1000, 1000) == [slice(0, 1000), slice(1000, 2000)]
    assert frames(999, 1000, 1000) == [slice(0, 999)]
    assert frames(3000, 1000, 500) == [slice(0, 1000), slice(500, 1500), slice(1000, 2000), slice(1500, 2500),
                                       slice(2000, 3000)]  # fmt: skip
    rng = np.random.default_rng(0)
    refs, ests = _random_sources(rng, (2, 1, 3000))
    refs[1, :, 1000:2000] = 0  # one source silent in the second frame: no source is scored there
    sdr = museval_sdr(refs, ests, 1000)
    assert np.isnan(sdr[:, 1]).all() and np.isfinite(sdr[:, [0, 2]]).all()
    np.testing.assert_allclose(bss_eval_v4(refs, ests, 1000, filters_len=16).sdr, sdr, atol=1e-8)
    perfect = museval_sdr(refs, refs, 1000)
    assert np.isinf(perfect[:, 0]).all()
    # museval stores inf as NaN and takes the median over the rest
    assert np.isnan(frame_median(perfect)).all()
    np.testing.assert_allclose(frame_median(np.array([[1.0, np.nan, 3.0, np.inf, 10.0]])), [3.0])


def test_si_sdr_is_scale_invariant_and_new_sdr_is_not():
    torch.manual_seed(0)
    ref = torch.randn(3, 1, 8000)
    est = ref + 0.3 * torch.randn_like(ref)
    base = si_sdr(est, ref)
    for scale in (0.1, 3.0, -2.0):
        torch.testing.assert_close(si_sdr(scale * est, ref), base, atol=1e-4, rtol=0)
    assert (new_sdr(3.0 * est, ref) < new_sdr(est, ref) - 5).all()
    mix = ref.sum(0)
    torch.testing.assert_close(si_sdr_improvement(mix.expand_as(ref), ref, mix), torch.zeros(3, 1), atol=1e-5, rtol=0)
    assert (si_sdr_improvement(est, ref, mix) > 5).all()


def test_new_sdr_follows_the_mdx_formula():
    ref, est = torch.ones(1, 2, 10), torch.full((1, 2, 10), 0.5)
    expected = 10 * np.log10((20 + 1e-7) / (5 + 1e-7))
    torch.testing.assert_close(new_sdr(est, ref), torch.tensor([expected], dtype=torch.float32))


def _synth_clips(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    world = get_world("synth")
    stems = []
    for i in range(count):
        s = world.sample(sample_seed(5, i), fixed={"drums": "rock"}).extras["stems"]
        stems.append([s["drums"], s["bass"], s["lead"]])
    stems = torch.from_numpy(np.array(stems))[:, :, None]  # (N, 3, 1, T)
    return stems.sum(1), stems


def test_ideal_ratio_mask_beats_the_mixture_on_synth_mixtures():
    mixes, stems = _synth_clips(4)
    irm = ideal_ratio_mask(stems)
    torch.testing.assert_close(irm.sum(1), mixes, atol=1e-5, rtol=0)  # the masks sum to one
    names = ["drums", "bass", "lead"]
    oracle = separation_scores(irm, stems, mixes, 16_000, names)
    baseline = separation_scores(mixture_as_estimate(mixes, 3), stems, mixes, 16_000, names)
    assert oracle["museval_scored_clips"] == 4
    for name in names:
        assert oracle[f"sdr_{name}"] > baseline[f"sdr_{name}"] + 5
        assert oracle[f"si_sdr_{name}"] > baseline[f"si_sdr_{name}"] + 5
    assert abs(baseline["si_sdri"]) < 1e-6 and oracle["si_sdri"] > 5


def test_separation_scores_skip_silent_stems_and_frames():
    mixes, stems = _synth_clips(2)
    stems[1, 0] = 0  # a clip without drums
    mixes = stems.sum(1)
    estimates = stems + 0.01 * torch.randn_like(stems)
    scores = separation_scores(estimates, stems, mixes, 16_000, ["drums", "bass", "lead"])
    assert scores["museval_scored_clips"] == 1  # museval scores no frame of a clip with a silent stem
    assert all(np.isfinite(scores[k]) for k in ("sdr_drums", "new_sdr_drums", "si_sdr_drums", "sdr"))
    with pytest.raises(ValueError, match="mixtures"):
        separation_scores(estimates, stems, mixes[:, :, :10], 16_000, ["drums", "bass", "lead"])
