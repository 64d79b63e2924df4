"""Generate stems with a multi-source diffusion model: all of them from a caption, or the rest given some.

:func:`generate_stems` is what ``mixstudio generate stems`` (and the trainer's sample grid) calls. Sample ``k`` of
prompt ``p`` draws its noise from its own generator seeded ``seed + 1000·p + k`` (the convention of
:func:`studio.generation.generate`), so a sample does not depend on the batch it was drawn in. With ``given`` stems
the sampler is MSDM's accompaniment (:func:`~studio.separation.msdm_sampling.accompany`): the given stems are kept
exactly and the others are generated to fit them. :func:`write_stems` writes them as a ``mixstudio world`` folder
does: the mixes as ``0000.wav, …`` with ``grid.png`` and ``manifest.json`` (so ``mixstudio eval`` scores them) and
the stems as ``stems/0000_drums.wav, …`` (so ``mixstudio eval --separation … --reference`` can use them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from studio.io import atomic_dir, write_png, write_wav
from studio.manifest import Manifest, ManifestItem, write_manifest
from studio.separation.msdm import MultiSourceDiffusion
from studio.separation.msdm_sampling import accompany, generate

#: Most samples in one call (one batch).
MAX_SAMPLES = 64
#: ``S_churn`` of generation (the MSDM notebook's 20 for total generation).
DEFAULT_CHURN = 20.0


def generate_stems(
    model: MultiSourceDiffusion,
    prompts: str | Sequence[str | None] | None,
    n: int = 1,
    *,
    given: Mapping[str, np.ndarray | torch.Tensor] | None = None,
    steps: int = 50,
    churn: float = DEFAULT_CHURN,
    resamples: int = 1,
    heun: bool = True,
    guidance_scale: float = 1.0,
    seed: int = 0,
    length_samples: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Stems (and their mix) for each prompt, ``n`` samples each.

    Args:
        model: a multi-source diffusion model.
        prompts: one caption, a list (None or ``""``: the null caption, unconditional), or None for one
            unconditional prompt.
        n: samples per prompt.
        given: stems to accompany, ``{name: (T,) waveform}`` at the model's rate (the same for every sample); the
            other stems are generated. None generates every stem.
        steps, churn, resamples, heun: the sampler (:class:`~studio.separation.msdm_sampling.SamplerSettings`).
        guidance_scale: classifier-free guidance against the null caption (1: none).
        seed: base seed (sample ``k`` of prompt ``p`` uses ``seed + 1000·p + k``).
        length_samples: length of the output; default: the given stems' length, else the model's segment.
        progress: called as ``progress(step, steps)`` after each sampler step.

    Returns:
        ``{stem: (N, T), …, "mix": (N, T)}`` float32 arrays, ``N = len(prompts) · n``, sample ``p · n + k`` for
        sample ``k`` of prompt ``p``; the mix is the sum of the stems.

    Raises:
        ValueError: for no prompt, ``n`` out of range, a given stem the model does not have, all stems given, given
            stems of different lengths, non-finite or non-1-D given audio, or a length that is not positive.
    """
    texts = [prompts] if isinstance(prompts, str) or prompts is None else list(prompts)
    if not texts or n < 1 or len(texts) * n > MAX_SAMPLES:
        raise ValueError(f"need 1 to {MAX_SAMPLES} samples in all, got {len(texts)} prompts x n={n}")
    sources = model.sources
    waves = _check_given(given or {}, sources)
    if length_samples is None:
        length_samples = next(iter(waves.values())).shape[-1] if waves else model.segment_samples
    if length_samples <= 0:
        raise ValueError(f"length_samples must be positive, got {length_samples}")
    device = model.unet.device
    padded = length_samples + (-length_samples % model.length_quantum)
    seeds = [seed + 1000 * p + k for p in range(len(texts)) for k in range(n)]
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    captions = [t for t in texts for _ in range(n)]
    denoise = model.denoiser(captions, len(captions), guidance_scale)
    settings = model.sampler_settings(steps=steps, churn=churn, resamples=resamples, heun=heun)
    callback = None if progress is None else (lambda i, x: progress(i + 1, steps))
    frames = padded // (model.config.n_fft // 2)
    shape = (len(captions), len(sources), 2, model.config.n_fft // 2, frames)
    with torch.no_grad():
        if waves:
            audio = torch.zeros(len(sources), padded, device=device)
            for name, wave in waves.items():
                audio[sources.index(name)] = F.pad(wave.to(device), (0, padded - wave.shape[-1]))[:padded]
            known = torch.tensor([name in waves for name in sources])
            given_x = model.to_domain(audio).expand(shape)
            x = accompany(denoise, given_x, known, settings, generator=generators, callback=callback)
        else:
            x = generate(denoise, shape, settings, generator=generators, device=device, callback=callback)
        audio = model.to_waveform(x)[..., :length_samples].float().cpu()
    if waves:  # the given stems come back as given (the STFT round trip is exact up to float rounding)
        for name, wave in waves.items():
            audio[:, sources.index(name)] = F.pad(wave.cpu(), (0, max(0, length_samples - wave.shape[-1])))[
                :length_samples
            ]
    out = {name: audio[:, s].numpy() for s, name in enumerate(sources)}
    out["mix"] = audio.sum(1).numpy()
    return out


def _check_given(given: Mapping[str, np.ndarray | torch.Tensor], sources: list[str]) -> dict[str, torch.Tensor]:
    """The given stems as float32 tensors ``(T,)``, checked against the model's sources."""
    waves = {}
    for name, wave in given.items():
        if name not in sources:
            raise ValueError(f"given stem {name!r} is not one this model generates; pick from {sources}")
        tensor = torch.as_tensor(np.asarray(wave) if not isinstance(wave, torch.Tensor) else wave).float()
        if tensor.ndim != 1 or tensor.numel() == 0 or not torch.isfinite(tensor).all():
            raise ValueError(f"given stem {name!r} must be a finite mono waveform (T,), got {tuple(tensor.shape)}")
        waves[name] = tensor
    if len(waves) == len(sources):
        raise ValueError(f"every stem is given ({sources}); leave at least one to generate")
    if len({w.shape[-1] for w in waves.values()}) > 1:
        raise ValueError(f"given stems differ in length ({ {k: v.shape[-1] for k, v in waves.items()} }); trim them")
    return waves


def write_stems(
    stems: Mapping[str, np.ndarray],
    out: str | Path,
    *,
    prompts: Sequence[str | None],
    seeds: Sequence[int],
    sample_rate: int,
    world: str = "synth",
    meta: dict[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Write what :func:`generate_stems` returned to ``out`` (whole, through a temporary sibling).

    Args:
        stems: ``{stem: (N, T), …, "mix": (N, T)}``.
        prompts, seeds: per sample (N each): its caption (None: unconditional) and seed.
        sample_rate: the model's rate.
        world: the world whose judges score the mixes.
        meta: manifest metadata (the settings).

    Returns:
        ``out`` as a Path.
    """
    from studio.plots import spectrogram_grid

    mixes = stems["mix"]
    items = []
    with atomic_dir(out, force=force) as tmp:
        (tmp / "stems").mkdir()
        for i, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
            write_wav(tmp / f"{i:04d}.wav", mixes[i], sample_rate)
            for name, audio in stems.items():
                if name != "mix":
                    write_wav(tmp / "stems" / f"{i:04d}_{name}.wav", audio[i], sample_rate)
            items.append(ManifestItem(file=f"{i:04d}.wav", prompt=prompt or "", seed=seed))
        write_png(tmp / "grid.png", spectrogram_grid(list(mixes[:16]), sample_rate))
        write_manifest(tmp, Manifest(world=world, modality="audio", items=items, meta=meta or {}))
    return Path(out)
