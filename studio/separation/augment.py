"""Training augmentation for separators, on stems, so the mixture stays their exact sum.

After demucs (facebookresearch/demucs, ``demucs/augment.py``: ``Shift``, ``FlipSign``, ``Scale``, ``Remix``;
and its repitch/tempo augmentation), rewritten to be deterministic per sample: every draw comes from an
explicit ``torch.Generator`` (the trainer's ``sample_generator(seed, step, index)``), so a run replays exactly
on resume and on any number of data-parallel processes. The aim is a model that learns *separation* rather
than the synth world's exact timbres and levels:

- **remix** (:func:`remix_groups`): stems are re-dealt across the clips of a group, each stem with its own
  permutation, so a drum part meets a bass line it was never composed with. Demucs shuffles within groups of
  4 for the same reason as here: the result must not depend on how a batch is split across processes;
- **varispeed** (:func:`varispeed_crop`): a random crop (demucs' ``Shift``) read at a speed of ``1 ± δ``,
  resampled with ``torchaudio.functional.resample`` at a rational ratio ``round(100 (1 + δ)) / 100``. This
  shifts pitch and tempo together, like tape speed (demucs uses a time-stretcher to change them separately;
  a joint shift is a tenth of the cost and still moves every note off the world's tuning grid);
- **random EQ** (:func:`random_eq`): a smooth random gain curve, linear in dB between log-spaced anchors,
  applied in the frequency domain (a zero-phase filter; its impulse response is a few ms, so the circular
  wrap at the segment edges is negligible);
- **gain** and **sign flip** per stem (demucs' ``Scale`` 0.25-1.25 and ``FlipSign``).
"""

from __future__ import annotations

import math

import torch
import torchaudio

#: Speed changes are quantised to 1/SPEED_STEPS, so each is a rational resampling ratio with a short kernel.
SPEED_STEPS = 100
#: Log-spaced anchor frequencies of the random EQ curve, as fractions of Nyquist.
EQ_ANCHORS = (0.0125, 0.03, 0.07, 0.16, 0.38, 1.0)


def check_remix_batch(batch_size: int, processes: int, remix_group: int) -> None:
    """Refuse a batch that does not split into whole remix groups on every process.

    Raises:
        ValueError: naming the per-process clip count and the settings to change.
    """
    per_process = batch_size // processes
    if per_process % remix_group:
        raise ValueError(
            f"each of {processes} processes gets {per_process} clips, not a multiple of "
            f"remix_group {remix_group}; change batch_size or remix_group"
        )


def remix_groups(stems: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """Re-deal stems across clips within groups: ``stems`` ``(G·n, S, T)``, one generator per group of ``n``.

    Stem ``s`` of clip ``k`` in a group comes from clip ``perm_s[k]`` of the same group (an independent random
    permutation per stem).
    """
    groups = len(generators)
    size = stems.shape[0] // groups
    out = torch.empty_like(stems)
    for g, gen in enumerate(generators):
        base = g * size
        for s in range(stems.shape[1]):
            perm = torch.randperm(size, generator=gen)
            out[base : base + size, s] = stems[base + perm, s]
    return out


def varispeed_crop(stem: torch.Tensor, length: int, max_change: float, generator: torch.Generator) -> torch.Tensor:
    """A random crop of ``length`` samples of ``stem`` ``(T,)``, played at a random speed in ``1 ± max_change``.

    Raises:
        ValueError: when ``stem`` is too short to give ``length`` samples at the fastest speed.
    """
    steps = round(max_change * SPEED_STEPS)
    change = int(torch.randint(-steps, steps + 1, (), generator=generator)) if steps else 0
    rate = SPEED_STEPS + change  # read `rate` samples for every SPEED_STEPS output samples
    needed = math.ceil(length * rate / SPEED_STEPS)
    if needed > stem.shape[-1]:
        raise ValueError(f"a {stem.shape[-1]}-sample stem cannot give {length} samples at speed {rate / SPEED_STEPS}")
    start = int(torch.randint(0, stem.shape[-1] - needed + 1, (), generator=generator))
    piece = stem[start : start + needed]
    if rate != SPEED_STEPS:
        piece = torchaudio.functional.resample(piece, rate, SPEED_STEPS)
    if piece.shape[-1] < length:
        piece = torch.nn.functional.pad(piece, (0, length - piece.shape[-1]))
    return piece[:length]


def random_eq(stem: torch.Tensor, max_db: float, generator: torch.Generator) -> torch.Tensor:
    """``stem`` ``(T,)`` through a random smooth EQ: gains uniform in ``±max_db`` at :data:`EQ_ANCHORS`,
    linear in dB over log frequency between them (flat below the first anchor)."""
    if max_db <= 0:
        return stem
    spec = torch.fft.rfft(stem)
    bins = spec.shape[-1]
    gains_db = (torch.rand(len(EQ_ANCHORS), generator=generator) * 2 - 1) * max_db
    position = torch.linspace(0, 1, bins).clamp_min(EQ_ANCHORS[0]).log()
    anchors = torch.tensor(EQ_ANCHORS).log()
    index = torch.searchsorted(anchors, position).clamp(1, len(EQ_ANCHORS) - 1)
    lo, hi = anchors[index - 1], anchors[index]
    frac = ((position - lo) / (hi - lo)).clamp(0, 1)
    curve_db = gains_db[index - 1] + frac * (gains_db[index] - gains_db[index - 1])
    return torch.fft.irfft(spec * 10 ** (curve_db / 20), n=stem.shape[-1])


def augment_stems(
    stems: torch.Tensor,
    length: int,
    generator: torch.Generator,
    *,
    gain_range: tuple[float, float] = (0.25, 1.25),
    flip_sign: bool = True,
    max_speed_change: float = 0.0,
    eq_max_db: float = 0.0,
) -> torch.Tensor:
    """One training example from one clip's stems ``(S, T_clip)``: ``(S, length)`` after varispeed crop, EQ,
    gain and sign flip, each drawn per stem from ``generator``."""
    out = []
    for stem in stems:
        x = varispeed_crop(stem, length, max_speed_change, generator)
        x = random_eq(x, eq_max_db, generator)
        low, high = gain_range
        x = x * (low + (high - low) * float(torch.rand((), generator=generator)))
        if flip_sign and bool(torch.rand((), generator=generator) < 0.5):
            x = -x
        out.append(x)
    return torch.stack(out)
