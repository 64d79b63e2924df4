"""Apply a separator to audio of any length, rate and channel count: resample, chunk, overlap-add.

:func:`separate` is what the CLI and the app call. It follows demucs' ``apply_model``
(facebookresearch/demucs, ``demucs/apply.py``): the input is cut into segments of the model's training
length with a fraction ``overlap`` shared between neighbours, each segment is separated on its own, and the
outputs are summed under a triangular weight (peak mid-segment, a linear cross-fade where two segments meet),
then divided by the summed weights, so the weights need not add to one. Only one segment's activations exist
at a time; the memory held besides the model is the input and the output at the model's rate. Demucs' random
``shifts`` (averaging over time-shifted passes) are left out: they cost a full pass each for ~0.2 dB.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import numpy as np
import torch
import torchaudio
from torch.nn import functional as F

from studio.separation.base import Separator

#: Accepted input rates in Hz (below 1 kHz or above 384 kHz is a unit mistake, not audio).
MIN_RATE, MAX_RATE = 1_000, 384_000
#: More channels than this is a (samples, channels) array passed the wrong way round.
MAX_CHANNELS = 64

Progress = Callable[[int, int], None]


def separate(
    model: Separator,
    audio: np.ndarray | torch.Tensor,
    sample_rate: int,
    *,
    segment: float | None = None,
    overlap: float = 0.25,
    progress: Progress | None = None,
) -> dict[str, np.ndarray | torch.Tensor]:
    """Separate ``audio`` into the model's sources, at the input's rate and channel count.

    The audio is resampled to ``model.sample_rate`` (``torchaudio.functional.resample``) and the estimates back
    to ``sample_rate``. Channels are fitted to the model: a mono model separates each channel on its own; a
    multi-channel model given mono audio gets it duplicated and its outputs are averaged back to mono.

    Args:
        model: a separator (in eval mode, as ``from_pretrained`` returns it).
        audio: float waveform ``(C, T)``, a numpy array or a tensor.
        sample_rate: the rate of ``audio`` in Hz, an integer in [1000, 384000].
        segment: chunk length in seconds; None uses the model's training segment.
        overlap: fraction of a chunk shared with the next one, in [0, 1).
        progress: called as ``progress(done, total)`` after each chunk.

    Returns:
        ``{source: (C, T)}`` at the input's rate, float32, numpy arrays for a numpy input and tensors (on the
        input's device) for a tensor input. Silence separates into silence.

    Raises:
        TypeError: for audio that is not a float array or tensor, or a non-integer sample rate.
        ValueError: for empty audio, zero channels, NaN/inf samples, a rate outside [1000, 384000], a bad
            ``segment``/``overlap``, or a channel count the model cannot take.
    """
    x = check_audio(audio, sample_rate)
    if segment is not None and not (isinstance(segment, numbers.Real) and math.isfinite(segment) and segment > 0):
        raise ValueError(f"segment must be a positive number of seconds or None, got {segment!r}")
    if not (isinstance(overlap, numbers.Real) and 0 <= overlap < 1):
        raise ValueError(f"overlap must be in [0, 1), got {overlap!r}; 0.25 is the usual choice")
    channels, length = x.shape
    batch = _to_model_channels(x, model.audio_channels).contiguous()
    rate = model.sample_rate
    if rate != sample_rate:
        batch = torchaudio.functional.resample(batch, int(sample_rate), rate)
    chunk = model.segment_samples if segment is None else max(1, round(segment * rate))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))

    def run(mix: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(mix.to(device)).float().cpu()

    estimates = overlap_add(run, batch, chunk, overlap, progress)  # (B, S, C_model, T_model)
    estimates = _from_model_channels(estimates, channels).contiguous()  # (S, C, T_model)
    if rate != sample_rate:
        estimates = torchaudio.functional.resample(estimates, rate, int(sample_rate))
    estimates = _fit_length(estimates, length)
    if isinstance(audio, torch.Tensor):
        return {name: est.to(audio.device) for name, est in zip(model.sources, estimates)}
    return {name: est.numpy() for name, est in zip(model.sources, estimates)}


def overlap_add(
    fn: Callable[[torch.Tensor], torch.Tensor],
    mix: torch.Tensor,
    segment: int,
    overlap: float = 0.25,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Apply ``fn`` to ``mix`` ``(B, C, T)`` in chunks of ``segment`` samples and overlap-add the results.

    Chunks start every ``max(1, int((1 - overlap) * segment))`` samples until one reaches the end; the last is
    zero-padded to ``segment`` and its output cropped, so ``fn`` always sees ``segment`` samples. Outputs are
    weighted by a triangle (demucs' ``apply_model``) and normalised by the summed weights, so a separator that
    returns its input reconstructs it exactly.

    Args:
        fn: a separator's forward, ``(B, C, segment) -> (B, S, C, segment)``.
        mix: the whole input ``(B, C, T)``.
        segment: chunk length in samples.
        overlap: fraction of a chunk shared with the next, in [0, 1).
        progress: called as ``progress(done, total)`` after each chunk.

    Returns:
        ``(B, S, C, T)``.
    """
    length = mix.shape[-1]
    stride = max(1, int((1 - overlap) * segment))
    starts = [0]
    while starts[-1] + segment < length:
        starts.append(starts[-1] + stride)
    half = segment // 2
    weight = torch.cat([torch.arange(1, half + 1), torch.arange(segment - half, 0, -1)]).float() / max(1, half)
    out, total = None, torch.zeros(length)
    for done, start in enumerate(starts, 1):
        piece = mix[..., start : start + segment]
        n = piece.shape[-1]
        est = fn(F.pad(piece, (0, segment - n)))[..., :n]
        if out is None:
            out = torch.zeros(*est.shape[:-1], length, dtype=est.dtype)
        out[..., start : start + n] += weight[:n] * est
        total[start : start + n] += weight[:n]
        if progress is not None:
            progress(done, len(starts))
    return out / total


def check_audio(audio: np.ndarray | torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Validate user audio and its rate; returns a float32 CPU tensor ``(C, T)``.

    Raises:
        TypeError: for something that is not a float numpy array or tensor, or a non-integer rate.
        ValueError: for a shape other than ``(C, T)``, zero channels or samples, too many channels (a
            transposed array), NaN/inf samples, or a rate outside [1000, 384000] Hz.
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Integral):
        raise TypeError(f"sample_rate must be an integer number of Hz, got {sample_rate!r}")
    if not MIN_RATE <= sample_rate <= MAX_RATE:
        raise ValueError(
            f"sample_rate must be in [{MIN_RATE}, {MAX_RATE}] Hz, got {sample_rate}; pass the file's rate"
        )
    if isinstance(audio, np.ndarray):
        if not np.issubdtype(audio.dtype, np.floating):
            raise TypeError(
                f"audio must be float samples in [-1, 1], got dtype {audio.dtype}; for int16 divide by 32768"
            )
        x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    elif isinstance(audio, torch.Tensor):
        if not audio.is_floating_point():
            raise TypeError(f"audio must be float samples in [-1, 1], got dtype {audio.dtype}")
        x = audio.detach().float().cpu()
    else:
        raise TypeError(
            f"audio must be a numpy array or a torch tensor (channels, samples), got {type(audio).__name__}"
        )
    if x.ndim != 2:
        raise ValueError(
            f"audio must be (channels, samples), got shape {tuple(x.shape)}; for mono (T,) pass audio[None]"
        )
    channels, length = x.shape
    if channels == 0 or length == 0:
        raise ValueError(f"audio is empty (shape {tuple(x.shape)}); pass at least one channel and one sample")
    if channels > MAX_CHANNELS:
        raise ValueError(
            f"audio has {channels} channels and {length} samples; pass (channels, samples), e.g. audio.T for a "
            "(samples, channels) array"
        )
    bad = ~torch.isfinite(x)
    if bad.any():
        channel, sample = (int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"audio has {int(bad.sum())} NaN/inf samples (first at channel {channel}, sample {sample}); "
            "replace them (e.g. numpy.nan_to_num) before separating"
        )
    return x


def _to_model_channels(x: torch.Tensor, model_channels: int) -> torch.Tensor:
    """``(C, T)`` → the model's batch ``(B, model_channels, T)``."""
    channels = x.shape[0]
    if channels == model_channels:
        return x[None]
    if model_channels == 1:
        return x[:, None]  # each channel on its own
    if channels == 1:
        return x.expand(model_channels, -1)[None]
    raise ValueError(
        f"the model takes {model_channels} channels but the audio has {channels}; "
        f"mix it down to mono or to {model_channels} channels first"
    )


def _from_model_channels(estimates: torch.Tensor, channels: int) -> torch.Tensor:
    """The model's ``(B, S, model_channels, T)`` → ``(S, channels, T)`` (inverse of :func:`_to_model_channels`)."""
    batch, _, model_channels, _ = estimates.shape
    if batch == 1 and model_channels == channels:
        return estimates[0]
    if model_channels == 1:
        return estimates[:, :, 0].transpose(0, 1)
    return estimates[0].mean(dim=1, keepdim=True)


def _fit_length(x: torch.Tensor, length: int) -> torch.Tensor:
    """Crop or zero-pad the last axis to ``length`` (resampling there and back may leave a sample over)."""
    return x[..., :length] if x.shape[-1] >= length else F.pad(x, (0, length - x.shape[-1]))
