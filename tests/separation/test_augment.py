import numpy as np
import pytest
import torch

from studio.separation.augment import augment_stems, random_eq, remix_groups, varispeed_crop


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_remix_redeals_each_stem_within_its_group():
    stems = torch.arange(8 * 3, dtype=torch.float32).view(8, 3, 1).expand(8, 3, 5).clone()
    out = remix_groups(stems, [_gen(0), _gen(1)])
    for group in (slice(0, 4), slice(4, 8)):
        for s in range(3):  # the same clips' stems, re-dealt
            assert sorted(out[group, s, 0].tolist()) == sorted(stems[group, s, 0].tolist())
    assert not torch.equal(out, stems)
    torch.testing.assert_close(remix_groups(stems, [_gen(0), _gen(1)]), out, atol=0, rtol=0)


@pytest.mark.parametrize("speed_steps", [0, 4])
def test_varispeed_shifts_a_tone_by_the_drawn_ratio(speed_steps):
    rate, length = 16_000, 8000
    tone = torch.sin(2 * torch.pi * 1000 * torch.arange(2 * rate) / rate)
    seen = set()
    for seed in range(12):
        out = varispeed_crop(tone, length, speed_steps / 100, _gen(seed))
        assert out.shape == (length,)
        peak_hz = np.argmax(np.abs(np.fft.rfft(out.numpy() * np.hanning(length)))) * rate / length
        ratio = peak_hz / 1000
        assert 1 - speed_steps / 100 - 0.003 <= ratio <= 1 + speed_steps / 100 + 0.003
        seen.add(round(ratio, 2))
    assert len(seen) > (1 if speed_steps else 0)
    with pytest.raises(ValueError, match="cannot give"):
        varispeed_crop(tone[:8100], length, 0.04, _gen(5))


def test_random_eq_is_smooth_bounded_and_off_at_zero_db():
    torch.manual_seed(0)
    noise = torch.randn(16_000)
    assert torch.equal(random_eq(noise, 0.0, _gen(0)), noise)
    out = random_eq(noise, 6.0, _gen(0))
    gain_db = 20 * torch.log10(torch.fft.rfft(out).abs() / torch.fft.rfft(noise).abs())
    assert gain_db.abs().max() <= 6.0 + 1e-3
    assert gain_db.std() > 0.5  # it does change the spectrum
    assert (gain_db[1:] - gain_db[:-1]).abs().max() < 0.1  # smooth: a few ms of impulse response


def test_augment_stems_is_deterministic_per_generator_and_changes_levels():
    torch.manual_seed(0)
    stems = torch.randn(3, 32768)
    a = augment_stems(stems, 24_000, _gen(3), max_speed_change=0.04, eq_max_db=6.0)
    b = augment_stems(stems, 24_000, _gen(3), max_speed_change=0.04, eq_max_db=6.0)
    c = augment_stems(stems, 24_000, _gen(4), max_speed_change=0.04, eq_max_db=6.0)
    assert a.shape == (3, 24_000)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.equal(a, c)
    rms = a.square().mean(-1).sqrt()
    assert ((rms > 0.2) & (rms < 1.6)).all()  # gains in [0.25, 1.25] times a unit-RMS stem, give or take EQ
