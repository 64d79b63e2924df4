"""A tight-frame STFT: an exactly linear, exactly invertible, energy-preserving map from waveforms to real images.

Multi-source diffusion needs a domain where the mixture is the sum of the stems, so that a separator can hold
``Σ_n x_n = y`` exactly while it samples (Mariani et al. 2024 work on waveforms for that reason). Log-mel is not
additive; a complex STFT is, and this one is also a *tight frame*, so its inverse is its transpose:

- frames of ``n_fft`` samples every ``hop = n_fft / 2`` samples, read **circularly** (the clip is one period of a
  loop: the first frame starts ``hop`` samples before the clip and wraps around), so ``T / hop`` frames cover a
  clip of ``T`` samples with no frame left over at the ends;
- a square-root Hann window (the sine window ``w[n] = sin(π (n + ½) / n_fft)``), for which
  ``w[n]² + w[n + hop]² = 1`` (Princen & Bradley 1986): every sample's squared window weights sum to one, so
  overlap-adding the windowed frames again (no division by an envelope) is the exact inverse;
- an orthonormal real DFT per frame: ``rfft(norm="ortho")`` with the bins strictly between DC and Nyquist scaled
  by ``√2``. DC and Nyquist are real for a real frame, so Nyquist is packed into DC's (zero) imaginary slot and a
  frame is exactly ``n_fft`` real numbers, an orthogonal transform of the windowed frame.

Together: ``P`` maps ``(…, T)`` to ``(…, 2, n_fft / 2, T / hop)`` (real and imaginary parts, bins, frames) with
``PᵀP = I``: :func:`tight_istft` inverts :func:`tight_stft` exactly (to float rounding), ``‖P x‖ = ‖x‖``, white
Gaussian noise of variance ``σ²`` per coefficient projects to white noise of variance ``σ²`` per sample, and an
image that is no STFT of any signal goes to the least-squares closest signal. ``T`` must be a multiple of ``hop``.

Example: ``n_fft = 4``, ``x = [1, 0, 0, 0]``: two frames, ``[x₋₂, x₋₁, x₀, x₁] = [0, 0, 1, 0]`` and
``[1, 0, 0, 0]``, windowed by ``sin(π/8 · [1, 3, 5, 7])``; their four coefficients each square-sum to
``w[2]² = 0.854`` and ``w[0]² = 0.146``, and together to ``‖x‖² = 1``.
"""

from __future__ import annotations

import math

import torch


def check_length(length: int, n_fft: int) -> None:
    """Refuse an ``n_fft`` that is not an even number >= 4, or a length that is not a positive multiple of the hop.

    Raises:
        ValueError: naming the value and the fix.
    """
    if n_fft < 4 or n_fft % 2:
        raise ValueError(f"n_fft must be an even number >= 4, got {n_fft}")
    hop = n_fft // 2
    if length <= 0 or length % hop:
        raise ValueError(f"a tight STFT with n_fft {n_fft} needs a length that is a multiple of {hop}, got {length}")


def sine_window(n_fft: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The square-root Hann (sine) window ``sin(π (n + ½) / n_fft)``; ``w[n]² + w[n + n_fft/2]² = 1``."""
    n = torch.arange(n_fft, device=device, dtype=torch.float64)
    return torch.sin(math.pi * (n + 0.5) / n_fft).to(dtype)


def _bin_scale(n_fft: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``√2`` for the bins strictly between DC and Nyquist, 1 for those two: the orthonormal real DFT."""
    scale = torch.full((n_fft // 2 + 1,), math.sqrt(2.0), device=device, dtype=dtype)
    scale[0] = scale[-1] = 1.0
    return scale


def tight_stft(x: torch.Tensor, n_fft: int) -> torch.Tensor:
    """Circular tight-frame STFT of waveforms ``(…, T)``: real images ``(…, 2, n_fft // 2, T // hop)``.

    Channel 0 holds the real parts of bins ``0 … n_fft/2 − 1``, channel 1 their imaginary parts, except that
    ``[1, 0]`` (DC's imaginary part, always zero) holds the Nyquist bin. Linear and ``‖tight_stft(x)‖ = ‖x‖``.

    Raises:
        ValueError: for ``T`` not a multiple of ``n_fft // 2``.
    """
    check_length(x.shape[-1], n_fft)
    hop, lead = n_fft // 2, x.shape[:-1]
    blocks = x.reshape(*lead, -1, hop)  # (…, F, hop)
    frames = torch.cat([blocks.roll(1, dims=-2), blocks], dim=-1)  # frame f: samples [(f − 1)·hop, (f + 1)·hop)
    window = sine_window(n_fft, x.device, x.dtype if x.is_floating_point() else torch.float32)
    spec = torch.fft.rfft(frames * window, norm="ortho") * _bin_scale(n_fft, x.device, window.dtype)
    real, imag = spec.real.clone(), spec.imag.clone()
    imag[..., 0] = real[..., -1]  # Nyquist into DC's imaginary slot
    packed = torch.stack([real[..., :-1], imag[..., :-1]], dim=-3)  # (…, 2, F, n_fft/2)
    return packed.transpose(-1, -2).contiguous()


def tight_istft(spec: torch.Tensor, n_fft: int) -> torch.Tensor:
    """Inverse (and transpose) of :func:`tight_stft`: images ``(…, 2, n_fft // 2, F)`` to waveforms ``(…, F · hop)``.

    Raises:
        ValueError: for a bin axis other than ``n_fft // 2`` or a real/imaginary axis other than 2.
    """
    if spec.shape[-3] != 2 or spec.shape[-2] != n_fft // 2:
        raise ValueError(f"expected images (…, 2, {n_fft // 2}, frames) for n_fft {n_fft}, got {tuple(spec.shape)}")
    hop = n_fft // 2
    packed = spec.transpose(-1, -2)  # (…, 2, F, n_fft/2)
    real, imag = packed[..., 0, :, :], packed[..., 1, :, :]
    nyquist = imag[..., :1]
    real = torch.cat([real, nyquist], dim=-1)
    imag = torch.cat([torch.zeros_like(nyquist), imag[..., 1:], torch.zeros_like(nyquist)], dim=-1)
    scale = _bin_scale(n_fft, spec.device, spec.dtype)
    frames = torch.fft.irfft(torch.complex(real / scale, imag / scale), n=n_fft, norm="ortho")
    frames = frames * sine_window(n_fft, spec.device, spec.dtype)  # (…, F, n_fft)
    # block b = second half of frame b + first half of frame b + 1 (circularly)
    blocks = frames[..., hop:] + frames[..., :hop].roll(-1, dims=-2)
    return blocks.flatten(-2)
