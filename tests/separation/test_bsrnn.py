import itertools

import pytest
import torch

from studio.separation import BandSplitRNN, band_edges, load_separator
from studio.separation.bsrnn import DEFAULT_BANDS, PAPER_BANDS


@pytest.mark.parametrize(
    ("n_fft", "rate", "bands"),
    [
        (1024, 16_000, DEFAULT_BANDS),
        (2048, 44_100, PAPER_BANDS),
        (512, 16_000, DEFAULT_BANDS),
        (1000, 22_050, ((300, 100), (5000, 700))),
        (256, 8_000, ((4000, 4000),)),
    ],
)
def test_band_plan_covers_every_stft_bin_exactly_once(n_fft, rate, bands):
    edges = band_edges(n_fft, rate, bands)
    covered = torch.zeros(n_fft // 2 + 1, dtype=torch.long)
    for lo, hi in itertools.pairwise(edges):
        assert hi > lo  # no empty band
        covered[lo:hi] += 1
    assert covered.eq(1).all()


def test_default_band_plan_keeps_the_papers_low_bands_then_four_per_octave():
    edges = band_edges(1024, 16_000, DEFAULT_BANDS)
    widths_hz = [(hi - lo) * 16_000 / 1024 for lo, hi in itertools.pairwise(edges)]
    assert len(widths_hz) == 22  # 10 x 100 Hz + 4 x 250 Hz + 4 x 500 Hz + 4 x 1 kHz
    assert all(90 <= w <= 110 for w in widths_hz[:10]) and sum(widths_hz[:10]) == 1000
    assert widths_hz[10:18] == [250] * 4 + [500] * 4
    assert widths_hz[18:21] == [1000] * 3 and edges[-1] == 513  # the Nyquist bin joins the last 1 kHz band
    # the paper's own plan gives its 41 bands at 44.1 kHz, and 30 below our 8 kHz Nyquist
    assert len(band_edges(2048, 44_100, PAPER_BANDS)) - 1 == 41
    assert len(band_edges(1024, 16_000, PAPER_BANDS[:3])) - 1 == 30


@pytest.mark.parametrize("bands", [((1000, 0),), ((1000, 100), (500, 100)), ((1000, 2000),)])
def test_band_plan_refuses_malformed_segments(bands):
    with pytest.raises(ValueError, match="band plan segment"):
        band_edges(1024, 16_000, bands)


@pytest.mark.parametrize("length", [1, 255, 4000, 16_001])
def test_a_mask_of_ones_returns_the_mixture(tiny_bsrnn, length):
    torch.manual_seed(1)
    mix = torch.randn(2, 1, length)
    spec = tiny_bsrnn.stft(mix)
    torch.testing.assert_close(tiny_bsrnn.istft(torch.ones_like(spec) * spec, length), mix, atol=1e-5, rtol=0)
    # and through forward: masks of one for every source give the mixture as every estimate
    tiny_bsrnn.estimate_masks = lambda s: torch.ones(s.shape[0], 3, *s.shape[1:], dtype=s.dtype)
    out = tiny_bsrnn(mix)
    assert out.shape == (2, 3, 1, length)
    torch.testing.assert_close(out, mix[:, None].expand_as(out), atol=1e-5, rtol=0)


def test_forward_shapes_stereo_and_finite_gradients():
    torch.manual_seed(0)
    model = BandSplitRNN(sources=["v", "x"], audio_channels=2, features=8, hidden=8, layers=2, mask_hidden=8)
    mix = torch.randn(3, 2, 3000)
    out = model(mix)
    assert out.shape == (3, 2, 2, 3000)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_silence_separates_into_silence(tiny_bsrnn):
    out = tiny_bsrnn(torch.zeros(1, 1, 5000))
    assert torch.equal(out, torch.zeros_like(out))


def test_save_and_load_round_trip(tiny_bsrnn, tmp_path):
    tiny_bsrnn.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = load_separator(tmp_path)
    assert isinstance(loaded, BandSplitRNN) and not loaded.training
    assert (loaded.sources, loaded.sample_rate, loaded.audio_channels, loaded.segment_samples) == (
        ["drums", "bass", "lead"], 16_000, 1, 8000,
    )  # fmt: skip
    assert loaded.edges == tiny_bsrnn.edges
    mix = torch.randn(1, 1, 4000)
    with torch.no_grad():
        torch.testing.assert_close(loaded(mix), tiny_bsrnn(mix), atol=0, rtol=0)


def test_forward_refuses_the_wrong_channel_count(tiny_bsrnn):
    with pytest.raises(ValueError, match="1 channels"):
        tiny_bsrnn(torch.randn(1, 2, 1000))
    with pytest.raises(ValueError, match="hop_length"):
        BandSplitRNN(n_fft=512, hop_length=300)
    with pytest.raises(ValueError, match="sources"):
        BandSplitRNN(sources=["a", "a"])


def test_default_model_is_a_few_megabytes():
    params = sum(p.numel() for p in BandSplitRNN().parameters())
    assert 600_000 < params < 1_000_000  # 798,608 (3.2 MB in float32)
