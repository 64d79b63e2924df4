"""Mel codec: waveforms ⇄ normalised log-mel "images" for mel diffusion, with a Griffin-Lim vocoder.

:class:`MelCodec` turns ``(B, T)`` audio into ``(B, 1, n_mels, T // hop)`` log-mel images in [-1, 1] for a
mel-diffusion UNet, and back: normalisation undone, filterbank inverted (clamped pseudo-inverse refined by
non-negative least squares), phase found by fast Griffin-Lim.

The defaults (``n_mels=80, n_fft=1024, f_min=30, f_max=6000, power=1, top_db=80``, 30 NNLS steps, 32 Griffin-Lim
iterations) are measured by ``benchmarks/bench_vocoder.py`` on 200 synth clips (seeds ``sample_seed(777, i)``,
32768 samples): spectral convergence ``sc`` and log-spectral distance ``lsd`` (dB) of ``decode(encode(x))`` vs
``x`` on a 1024-point STFT; encode+decode ms per clip on 1 thread of an AMD EPYC (2 cores shared with training
jobs, so ±20%); and the shipped synth eval judge's accuracy on the reconstructions. On the original clips the
judge scores tempo 1.000, key 1.000, mode 0.995, lead 1.000, drums 1.000, bass 1.000.

    n_mels f_max   sc    lsd  ms  | tempo  key   mode  lead  drums bass
      64   4000  0.387 10.1   76  | 0.985 0.995 0.935 0.995 0.835 1.000
      64   6000  0.395  8.8   74  | 0.990 0.980 0.885 0.995 0.850 1.000
      64   8000  0.377  5.8   73  | 0.985 0.920 0.815 0.985 0.885 1.000
      80   4000  0.359  9.7   74  | 0.980 1.000 0.975 1.000 0.895 1.000
      80   6000  0.338  8.2   72  | 0.990 1.000 0.980 0.995 1.000 1.000   <- default
      80   8000  0.304  5.1   80  | 0.995 1.000 0.965 0.990 0.880 1.000
      96   6000  0.317  7.9   71  | 0.995 1.000 0.985 1.000 1.000 1.000
      96   8000  0.266  4.6   70  | 0.990 1.000 0.975 1.000 1.000 1.000

* Pitch, not spectral error, decides the resolution. The judge hears key and mode through a semitone
  spectrogram; 64 HTK bands up to 8 kHz sit 37-46 Hz (2.3-1.5 semitones) apart over the melody's 260-520 Hz,
  and mode drops 18 points although ``sc`` is the best 64-band row. Lowering ``f_max`` narrows the bands, but
  the drum head loses 10-17 points everywhere except 80-96 bands to 6 kHz and 96 to 8 kHz (measured, not
  explained: it is not monotonic in ``f_max``).
  80 bands up to 6 kHz stay within 1.5 points of the originals on every attribute for 1.25x the pixels of 64;
  96 bands buy ``sc`` and ``lsd`` (the 6-8 kHz hi-hat top) but no judged attribute, for 1.2x the pixels of 80.
* ``n_fft=1024`` beats 2048 (80 bands, 6 kHz: ``sc`` 0.338 vs 0.448, mode 0.980 vs 0.945, half the time): more
  STFT bins per band are more unknowns for the inversion. Magnitude mels (``power=1``) beat power mels
  (``sc`` 0.338 vs 0.362, mode 0.980 vs 0.950).
* Filterbank inversion: the clamped pseudo-inverse (0.3 ms/clip) gives the same minimum-norm solution as
  ``torch.linalg.lstsq`` / ``InverseMelScale`` (2.7 ms/clip, 8x slower). Refining it with 30 multiplicative NNLS
  steps (12 ms/clip) lowers ``sc`` 0.380 -> 0.338 and lifts mode 0.930 -> 0.980; 100 steps: 0.329, 0.990, +18 ms.
* Griffin-Lim (momentum 0.99), 16/32/64 iterations: ``sc`` 0.354/0.338/0.332, mode 0.980/0.980/0.995, drums
  0.985/1.000/1.000, 40/67/121 ms per clip. 32 is the default; ``decode(n_iter=64)`` is there for final renders.
* Levels are dB against full scale, not the clip's peak, so loudness survives: synth mixtures (peak 0.9) reach
  at most 0.95 of the [-1, 1] range. ``top_db`` 60/80/100 changes ``sc`` by < 0.002 (64 bands, 48 clips); 80
  keeps fades.
"""

from __future__ import annotations

import math

import torch
import torchaudio
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


class MelCodec(ModelMixin, ConfigMixin):
    """Waveforms ``(B, T)`` ⇄ log-mel images ``(B, 1, n_mels, T // hop_length)`` in [-1, 1].

    The STFT magnitude is scaled by ``2 / sum(window)`` so a full-scale sine reads 1.0 in its bin at
    any ``n_fft``; mel filters are unnormalised HTK triangles (peak 1), so a tone's mel level does
    not depend on ``n_mels`` either. Levels are in dB against that fixed full-scale reference (not
    the clip's own maximum, so a model learns absolute loudness): ``max_db`` maps to +1 and
    ``max_db - top_db`` (and anything quieter) to -1.

    Args:
        sample_rate: audio sample rate in Hz.
        n_fft: STFT size (Hann window of the same length).
        hop_length: STFT hop; one mel frame per ``hop_length`` samples.
        n_mels: mel bands (the image height; a multiple of 8 suits a 3-downsample UNet).
        f_min, f_max: band edges of the mel filterbank in Hz (``f_max <= sample_rate / 2``).
        top_db: dynamic range kept below ``max_db``; quieter bins clamp to -1.
        max_db: level in dB re full scale that maps to +1.
        power: 1 (magnitude mel) or 2 (power mel).
        griffin_lim_iters: default Griffin-Lim iterations of :meth:`decode`.
        nnls_iters: multiplicative-update steps that refine the clamped pseudo-inverse of the filterbank
            towards the non-negative least-squares spectrum (0 keeps the clamped pseudo-inverse).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        sample_rate: int = 16_000,
        n_fft: int = 1024,
        hop_length: int = 256,
        n_mels: int = 80,
        f_min: float = 30.0,
        f_max: float = 6000.0,
        top_db: float = 80.0,
        max_db: float = 0.0,
        power: float = 1.0,
        griffin_lim_iters: int = 32,
        nnls_iters: int = 30,
    ):
        super().__init__()
        if power not in (1.0, 2.0):
            raise ValueError(f"power must be 1 (magnitude mel) or 2 (power mel), got {power}")
        if not 0 < n_mels <= n_fft // 2 + 1:
            raise ValueError(
                f"n_mels must be in [1, n_fft // 2 + 1 = {n_fft // 2 + 1}], got {n_mels}; try 64, 80 or 96"
            )
        if not 0.0 <= f_min < f_max <= sample_rate / 2:
            raise ValueError(
                f"need 0 <= f_min < f_max <= sample_rate / 2 = {sample_rate / 2}, got f_min={f_min}, f_max={f_max}"
            )
        if hop_length <= 0 or n_fft < hop_length:
            raise ValueError(f"need 0 < hop_length <= n_fft, got hop_length={hop_length}, n_fft={n_fft}")
        if top_db <= 0 or griffin_lim_iters < 0 or nnls_iters < 0:
            raise ValueError(
                f"need top_db > 0, griffin_lim_iters >= 0 and nnls_iters >= 0, "
                f"got {top_db}, {griffin_lim_iters}, {nnls_iters}"
            )
        fb = torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, f_min, f_max, n_mels, sample_rate).double()
        window = torch.hann_window(n_fft, dtype=torch.float64)
        # derived from the config, so not saved: the safetensors file stays a few hundred bytes
        self.register_buffer("filterbank", fb.float(), persistent=False)  # (n_freq, n_mels)
        self.register_buffer("inverse_filterbank", torch.linalg.pinv(fb.T).float(), persistent=False)
        self.register_buffer("window", window.float(), persistent=False)
        # the one saved tensor: diffusers writes no weights file for an empty state dict, and from_pretrained
        # then fails; a format version keeps the file (a few hundred bytes) and lets later formats migrate
        self.register_buffer("format_version", torch.tensor([1], dtype=torch.int32))
        self.magnitude_scale = 2.0 / float(window.sum())

    def stft(self, audio: torch.Tensor) -> torch.Tensor:
        """Centred complex STFT ``(B, n_fft // 2 + 1, T // hop_length + 1)`` of waveforms ``(B, T)`` (unscaled)."""
        return torch.stft(
            audio, self.config.n_fft, self.config.hop_length, window=self.window, center=True, return_complex=True
        )

    def istft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        """Inverse of :meth:`stft`: waveforms ``(B, length)`` from ``(B, n_fft // 2 + 1, frames)``."""
        return torch.istft(spec, self.config.n_fft, self.config.hop_length, window=self.window, length=length)

    def mel_spectrogram(self, audio: torch.Tensor) -> torch.Tensor:
        """Linear mel spectrogram (full scale = 1) ``(B, n_mels, T // hop_length)`` of waveforms ``(B, T)``."""
        self._check_audio(audio)
        frames = audio.shape[-1] // self.config.hop_length
        # a centred STFT has one frame more than T // hop; drop it so 32768 samples → 128 frames
        spec = self.stft(audio.float())[..., :frames].abs() * self.magnitude_scale
        return torch.einsum("bft,fm->bmt", spec.pow(self.config.power), self.filterbank)

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """Normalised log-mel image of waveforms.

        Args:
            audio: waveforms ``(B, T)`` at ``sample_rate``, nominally in [-1, 1]; ``T >= n_fft // 2 + 1``.
                A tail shorter than one hop is dropped, so ``decode`` returns ``T // hop * hop`` samples.

        Returns:
            ``(B, 1, n_mels, T // hop_length)`` in [-1, 1] (-1 = ``top_db`` or more below ``max_db``).
        """
        mel = self.mel_spectrogram(audio)
        cfg = self.config
        floor = cfg.max_db - cfg.top_db
        db = (20.0 / cfg.power) * torch.log10(mel.clamp_min(10.0 ** (cfg.power * (floor - 1.0) / 20.0)))
        return ((db.clamp(floor, cfg.max_db) - floor) * (2.0 / cfg.top_db) - 1.0)[:, None]

    def mel_to_linear(self, mel: torch.Tensor) -> torch.Tensor:
        """Invert the normalisation and the filterbank: STFT magnitude ``(B, n_fft // 2 + 1, frames)``.

        Args:
            mel: normalised log-mel ``(B, 1, n_mels, frames)`` as returned by :meth:`encode`.

        Returns:
            Non-negative magnitude in STFT units (not full-scale units), ready for Griffin-Lim.
        """
        self._check_mel(mel)
        cfg = self.config
        db = (mel[:, 0].float().clamp(-1.0, 1.0) + 1.0) * (cfg.top_db / 2.0) + (cfg.max_db - cfg.top_db)
        # the floor (-1) stands for "top_db or more below max_db": decode it as silence, not a -top_db hiss
        level = torch.where(mel[:, 0] > -1.0, 10.0 ** (db * (cfg.power / 20.0)), 0.0)
        linear = self.nnls(level, torch.einsum("fm,bmt->bft", self.inverse_filterbank, level).clamp_min(0.0))
        return linear.pow(1.0 / cfg.power) / self.magnitude_scale

    def nnls(self, level: torch.Tensor, init: torch.Tensor) -> torch.Tensor:
        """Refine ``init`` towards ``argmin_{S >= 0} ‖filterbankᵀ S − level‖²`` by multiplicative updates.

        Lee & Seung (2001), eq. 4 with the dictionary fixed: ``S ← S ⊙ (F m) / (F Fᵀ S)``. Each step keeps
        ``S >= 0`` and lowers the residual; unlike the minimum-norm pseudo-inverse it concentrates energy
        back into tonal peaks.

        Args:
            level: linear mel levels ``(B, n_mels, frames)``.
            init: non-negative starting spectrum ``(B, n_fft // 2 + 1, frames)``.

        Returns:
            The refined spectrum, same shape as ``init``.
        """
        if self.config.nnls_iters == 0:
            return init
        # a tiny floor lets bins that the clamp zeroed grow back (a zero is a fixed point of the update)
        spec = init + 1e-7
        target = torch.einsum("fm,bmt->bft", self.filterbank, level)
        for _ in range(self.config.nnls_iters):
            fitted = torch.einsum("fm,bft->bmt", self.filterbank, spec)
            spec = spec * target / torch.einsum("fm,bmt->bft", self.filterbank, fitted).clamp_min(1e-12)
        return spec

    def decode(
        self, mel: torch.Tensor, n_iter: int | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Waveforms from normalised log-mel images (:meth:`mel_to_linear`, then fast Griffin-Lim).

        Differentiable in ``mel`` with the phase held fixed: Griffin-Lim finds the phase without a graph,
        and the gradient flows through the magnitude into the final inverse STFT. The forward values are
        Griffin-Lim's exactly; the gradient is that of ``istft(|S(mel)| · phase)`` at the found phase, so
        a reward on the waveform can be backpropagated into the mel (and through a sampler) at the cost of
        one inverse STFT, not of 32 phase-retrieval iterations.

        Args:
            mel: ``(B, 1, n_mels, frames)`` in [-1, 1].
            n_iter: Griffin-Lim iterations; ``None`` uses ``config.griffin_lim_iters``.
            generator: draws a random initial phase; ``None`` starts from zero phase. Either way the
                result is deterministic.

        Returns:
            Waveforms ``(B, frames * hop_length)``, each scaled down if needed so its peak is at most 1.
        """
        n_iter = self.config.griffin_lim_iters if n_iter is None else n_iter
        if n_iter < 0:
            raise ValueError(
                f"n_iter must be >= 0, or None for the config's {self.config.griffin_lim_iters}; got {n_iter}"
            )
        magnitude = self.mel_to_linear(mel)
        # the STFT of frames * hop samples has one frame more than the (cropped) mel: repeat the last one
        magnitude = torch.cat([magnitude, magnitude[..., -1:]], dim=-1)
        with torch.no_grad():
            phase = self.griffin_lim_phase(magnitude, n_iter, generator=generator)
        audio = self.istft(magnitude * phase, (magnitude.shape[-1] - 1) * self.config.hop_length)
        peak = audio.abs().amax(dim=-1, keepdim=True).clamp_min(1.0)
        return audio / peak

    def griffin_lim_phase(
        self, magnitude: torch.Tensor, n_iter: int, momentum: float = 0.99, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Fast Griffin-Lim (Perraudin, Balazs & Søndergaard 2013, Alg. 2): phase for a magnitude.

        ``t_n = P_C1(P_C2(c_{n-1}))``, ``c_n = t_n + momentum · (t_n - t_{n-1})``, where ``P_C2`` imposes the
        magnitude and ``P_C1`` is STFT(ISTFT(·)).

        Args:
            magnitude: STFT magnitude ``(B, n_fft // 2 + 1, frames + 1)``.
            n_iter: iterations (0 returns the initial phase).
            momentum: the FGLA ``alpha``; 0 is plain Griffin-Lim.
            generator: random initial phase; ``None`` uses zero phase.

        Returns:
            Unit-modulus complex phase ``(B, n_fft // 2 + 1, frames + 1)``; the waveform is
            ``istft(magnitude * phase)``.
        """
        length = (magnitude.shape[-1] - 1) * self.config.hop_length
        if generator is None:
            angles = torch.ones_like(magnitude, dtype=torch.complex64)
        else:
            phase = torch.rand(magnitude.shape, generator=generator, device=generator.device).to(magnitude.device)
            angles = torch.polar(torch.ones_like(magnitude), phase * (2 * math.pi))
        previous = torch.zeros_like(angles)
        for _ in range(n_iter):
            rebuilt = self.stft(self.istft(magnitude * angles, length))
            angles = rebuilt + momentum * (rebuilt - previous)
            angles = angles / angles.abs().clamp_min(1e-16)
            previous = rebuilt
        return angles

    def _check_audio(self, audio: torch.Tensor) -> None:
        min_len = self.config.n_fft // 2 + 1
        if audio.ndim != 2 or audio.shape[-1] < min_len:
            raise ValueError(
                f"audio must be waveforms (B, T) with T >= n_fft // 2 + 1 = {min_len}, got {tuple(audio.shape)}; "
                "add a batch dimension with audio[None] or pad short clips"
            )

    def _check_mel(self, mel: torch.Tensor) -> None:
        n_mels = self.config.n_mels
        if mel.ndim != 4 or mel.shape[1] != 1 or mel.shape[2] != n_mels or mel.shape[3] < 1:
            raise ValueError(
                f"mel must have shape (B, 1, {n_mels}, frames) as made by encode(), got {tuple(mel.shape)}; "
                f"check that it came from a codec with n_mels={n_mels}"
            )
