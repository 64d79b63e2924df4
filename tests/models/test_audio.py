import math

import pytest
import torch

from studio.models.audio import MelCodec
from studio.worlds import get_world, sample_seed

SAMPLES = 32768  # one synth-world clip: 2.048 s at 16 kHz


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Codec ops on one clip are too small to gain from threads; on a busy CPU, thread barriers cost 10-50x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def codec() -> MelCodec:
    return MelCodec()


@pytest.fixture(scope="module")
def clips() -> torch.Tensor:
    world = get_world("synth")
    return torch.stack([torch.from_numpy(world.sample(sample_seed(0, i)).data) for i in range(4)])


def spectral_convergence(reference: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """‖|S| − |Ŝ|‖_F / ‖|S|‖_F per clip, on a 1024-point STFT."""
    window = torch.hann_window(1024)
    s = torch.stft(reference, 1024, 256, window=window, return_complex=True).abs()
    s_hat = torch.stft(estimate, 1024, 256, window=window, return_complex=True).abs()
    return (s - s_hat).norm(dim=(1, 2)) / s.norm(dim=(1, 2))


def test_encode_shape_and_range(codec, clips):
    mel = codec.encode(clips)
    assert mel.shape == (4, 1, codec.config.n_mels, SAMPLES // codec.config.hop_length) == (4, 1, 80, 128)
    assert mel.min() >= -1 and mel.max() <= 1
    # world mixtures (peak 0.9) use most of the range but do not saturate at +1
    assert 0.5 < mel.amax() < 1.0 and mel.amin() == -1.0


def test_encode_of_silence_is_the_floor(codec):
    assert torch.equal(codec.encode(torch.zeros(2, SAMPLES)), torch.full((2, 1, 80, 128), -1.0))


def test_encode_keeps_absolute_loudness(codec, clips):
    means = [codec.encode(clips * gain).mean().item() for gain in (0.1, 0.3, 1.0)]
    assert means[0] < means[1] < means[2]
    # a fixed reference: 20 dB quieter is 20 / top_db * 2 lower wherever nothing hits the floor
    loud, quiet = codec.encode(clips), codec.encode(clips * 0.1)
    above_floor = quiet > -1
    torch.testing.assert_close(loud[above_floor] - quiet[above_floor], torch.full_like(loud[above_floor], 0.5))


def test_round_trip_of_world_clips(codec, clips):
    recon = codec.decode(codec.encode(clips))
    assert recon.shape == clips.shape and recon.abs().max() <= 1
    sc = spectral_convergence(clips, recon)
    # measured on these 4 clips: 0.16-0.36 (mean 0.30); on 200 clips: mean 0.34, max 0.46
    assert sc.max() < 0.45 and sc.mean() < 0.40
    # Griffin-Lim must beat the zero-phase start
    assert sc.mean() < spectral_convergence(clips, codec.decode(codec.encode(clips), n_iter=0)).mean() - 0.1


def test_round_trip_of_a_sine_keeps_its_pitch(codec):
    t = torch.arange(SAMPLES) / codec.config.sample_rate
    recon = codec.decode(codec.encode(0.5 * torch.sin(2 * math.pi * 440.0 * t)[None]))
    spectrum = torch.fft.rfft(recon[0] * torch.hann_window(SAMPLES)).abs()
    peak_hz = spectrum.argmax().item() * codec.config.sample_rate / SAMPLES
    assert abs(12 * math.log2(peak_hz / 440.0)) < 1.0


def test_decode_is_deterministic(codec, clips):
    mel = codec.encode(clips[:2])
    torch.testing.assert_close(codec.decode(mel, n_iter=8), codec.decode(mel, n_iter=8), rtol=0, atol=0)
    first = codec.decode(mel, n_iter=8, generator=torch.Generator().manual_seed(3))
    again = codec.decode(mel, n_iter=8, generator=torch.Generator().manual_seed(3))
    other = codec.decode(mel, n_iter=8, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, other)


def test_decode_is_differentiable_with_the_griffin_lim_phase_held_fixed(codec, clips):
    """The gradient of decode is that of ``istft(|S(mel)| · phase)`` at Griffin-Lim's phase, checked by
    central differences of that function along a random direction."""
    mel = codec.encode(clips[:2]).requires_grad_(True)
    weights = torch.randn(2, SAMPLES, generator=torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad((codec.decode(mel, n_iter=8) * weights).sum(), mel)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0

    def fixed_phase(m: torch.Tensor) -> torch.Tensor:
        magnitude = codec.mel_to_linear(m)
        magnitude = torch.cat([magnitude, magnitude[..., -1:]], dim=-1)
        audio = codec.istft(magnitude * phase, SAMPLES)
        return (audio / audio.abs().amax(dim=-1, keepdim=True).clamp_min(1.0) * weights).sum()

    with torch.no_grad():
        magnitude = codec.mel_to_linear(mel)
        phase = codec.griffin_lim_phase(torch.cat([magnitude, magnitude[..., -1:]], dim=-1), 8)
        # the forward values are Griffin-Lim's: the same phase rebuilds decode's waveform
        torch.testing.assert_close(fixed_phase(mel), (codec.decode(mel, n_iter=8) * weights).sum())
        # away from the floor (-1 is silence, where the gradient is zero by design)
        direction = torch.randn(mel.shape, generator=torch.Generator().manual_seed(1)) * (mel > -0.95)
        eps = 1e-3
        numeric = (fixed_phase(mel + eps * direction) - fixed_phase(mel - eps * direction)) / (2 * eps)
    analytic = (grad * direction).sum()
    torch.testing.assert_close(analytic, numeric, rtol=0.05, atol=1e-3 * numeric.abs().item())


def test_decode_length_follows_frames(codec):
    assert codec.decode(torch.zeros(1, 1, 80, 37), n_iter=2).shape == (1, 37 * 256)


def test_save_and_load_round_trip(tmp_path, clips):
    codec = MelCodec(n_mels=64, f_max=4000.0, top_db=70.0)
    codec.save_pretrained(tmp_path)
    loaded = MelCodec.from_pretrained(tmp_path)
    assert loaded.config.n_mels == 64 and loaded.config.f_max == 4000.0 and loaded.config.top_db == 70.0
    assert torch.equal(loaded.encode(clips), codec.encode(clips))
    # filterbank and window are rebuilt from the config, not stored
    assert sum(f.stat().st_size for f in tmp_path.glob("*.safetensors")) < 1024


@pytest.mark.parametrize("audio", [torch.zeros(SAMPLES), torch.zeros(1, 1, SAMPLES), torch.zeros(2, 100)])
def test_encode_rejects_bad_audio(codec, audio):
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        codec.encode(audio)


@pytest.mark.parametrize("mel", [torch.zeros(1, 80, 128), torch.zeros(1, 1, 64, 128), torch.zeros(1, 2, 80, 128)])
def test_decode_rejects_bad_mel(codec, mel):
    with pytest.raises(ValueError, match=r"\(B, 1, 80, frames\)"):
        codec.decode(mel)


@pytest.mark.parametrize("kwargs", [{"power": 3.0}, {"f_max": 9000.0}, {"hop_length": 2048}, {"top_db": 0.0}])
def test_config_is_validated(kwargs):
    with pytest.raises(ValueError):
        MelCodec(**kwargs)


def test_nnls_refinement_recovers_the_spectrum_better_than_the_clamped_pseudo_inverse(codec, clips):
    true = codec.stft(clips)[..., :128].abs()
    errors = []
    for refined in (MelCodec(nnls_iters=0), codec):
        estimate = refined.mel_to_linear(refined.encode(clips))
        errors.append(((estimate - true).norm() / true.norm()).item())
    # measured on these clips: 0.34 (clamped pseudo-inverse) vs 0.27 (30 multiplicative updates)
    assert errors[1] < errors[0] - 0.02
