"""Separate audio files of any length with bounded memory, and write the stems as files.

A file is read in windows of ``WINDOW_SECONDS`` (plus ``CONTEXT_SECONDS`` of context on each side), each window is
separated by :func:`~studio.separation.apply.separate` (resampled, chunked and overlap-added inside), the context is
cut off and the rest written straight to the stem files. Neighbouring windows share ``CROSSFADE_SECONDS`` that are
cross-faded linearly, so a window seam is as smooth as a chunk seam. Memory is a few windows' worth whatever the
file's length: a two-hour file takes as much as a two-minute one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from studio.separation.apply import separate
from studio.separation.base import Separator

WINDOW_SECONDS = 60.0
CONTEXT_SECONDS = 3.0
CROSSFADE_SECONDS = 1.0
#: Output formats of the stem files: soundfile format and subtype.
FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "wav32": ("WAV", "FLOAT")}

Progress = Callable[[float], None]


@dataclass
class SeparatedFile:
    """What :func:`separate_file` wrote for one input."""

    input: str
    sample_rate: int
    channels: int
    seconds: float
    stems: dict[str, str]


def stem_plan(sources: Sequence[str], stems: Sequence[str] | None, two_stems: str | None) -> dict[str, list[str]]:
    """Output stem name -> the model sources summed into it.

    ``stems`` keeps some sources (default: all); ``two_stems=x`` writes ``x`` and ``no_x`` (the other sources
    summed), as demucs does.

    Raises:
        ValueError: for a stem the model does not separate, both options at once, or no stem at all.
    """
    if stems is not None and two_stems is not None:
        raise ValueError("give --stems or --two-stems, not both")
    for name in [*(stems or []), *([two_stems] if two_stems else [])]:
        if name not in sources:
            raise ValueError(f"stem {name!r} is not one this model separates; pick from {list(sources)}")
    if two_stems is not None:
        return {two_stems: [two_stems], f"no_{two_stems}": [s for s in sources if s != two_stems]}
    kept = list(stems) if stems is not None else list(sources)
    if not kept:
        raise ValueError(f"no stems asked for; pick from {list(sources)}")
    return {name: [name] for name in kept}


def read_info(path: Path) -> tuple[int, int, int]:
    """``(sample rate, channels, frames)`` of an audio file.

    Raises:
        ValueError: for a missing or unreadable file, or one without samples.
    """
    import soundfile as sf

    if not path.is_file():
        raise ValueError(f"input {str(path)!r} does not exist; check the path")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise ValueError(f"input {str(path)!r} is not a readable audio file ({err}); pass WAV or FLAC") from None
    if info.frames == 0 or info.channels == 0:
        raise ValueError(f"input {str(path)!r} holds no samples; pass a file with sound in it")
    return int(info.samplerate), int(info.channels), int(info.frames)


def separate_file(
    model: Separator,
    path: str | Path,
    out: str | Path,
    *,
    plan: dict[str, list[str]],
    segment: float | None = None,
    overlap: float = 0.25,
    file_format: str = "wav",
    progress: Progress | None = None,
    window_seconds: float = WINDOW_SECONDS,
) -> SeparatedFile:
    """Separate one audio file into ``out/<stem>.<ext>`` (at the input's rate and channel count).

    Args:
        model: a separator in eval mode.
        path: a WAV or FLAC file of any rate, channel count and length.
        out: the folder that receives the stem files (it must exist; the caller writes it whole).
        plan: output stem -> model sources summed into it (:func:`stem_plan`).
        segment, overlap: the chunking inside each window (see :func:`~studio.separation.apply.separate`).
        file_format: a key of :data:`FORMATS`.
        progress: called with the fraction of the file done.
        window_seconds: length of the windows the file is read in (memory scales with it, not with the file).

    Raises:
        ValueError: for an unreadable, empty or non-finite input (naming the file and the sample).
    """
    import soundfile as sf

    path, out = Path(path), Path(out)
    rate, channels, frames = read_info(path)
    kind, subtype = FORMATS[file_format]
    suffix = ".flac" if kind == "FLAC" else ".wav"
    window, context = max(1, round(window_seconds * rate)), round(CONTEXT_SECONDS * rate)
    fade = min(round(CROSSFADE_SECONDS * rate), window // 2)
    files = {name: out / f"{name}{suffix}" for name in plan}
    writers = {name: sf.SoundFile(str(f), "w", rate, channels, subtype, format=kind) for name, f in files.items()}
    pending: dict[str, np.ndarray] | None = None  # the previous window's last ``fade`` samples, not yet written
    try:
        with sf.SoundFile(str(path)) as source:
            for start in range(0, frames, window):
                stop = min(frames, start + window)
                lo, hi = max(0, start - context - fade), min(frames, stop + context)
                source.seek(lo)
                block = source.read(hi - lo, dtype="float32", always_2d=True).T  # (C, T)
                if not np.isfinite(block).all():
                    raise ValueError(f"input {str(path)!r} holds NaN or inf samples; re-export it")
                estimates = separate(model, block, rate, segment=segment, overlap=overlap)
                first = start - fade if start > 0 else 0  # where this window's written part begins
                stems = {n: sum(estimates[s] for s in srcs)[:, first - lo : stop - lo] for n, srcs in plan.items()}
                if pending is not None:  # cross-fade the seam with the previous window's tail
                    ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
                    for name in stems:
                        stems[name][:, :fade] = pending[name] * (1 - ramp) + stems[name][:, :fade] * ramp
                last = stop >= frames
                keep = stop - first if last else stop - first - fade
                for name, audio in stems.items():
                    writers[name].write(np.clip(audio[:, :keep], -1.0, 1.0).T)
                pending = None if last else {name: audio[:, keep:] for name, audio in stems.items()}
                if progress is not None:
                    progress(stop / frames)
    finally:
        for writer in writers.values():
            writer.close()
    return SeparatedFile(str(path), rate, channels, frames / rate, {n: f.name for n, f in files.items()})


def write_separation_manifest(out: Path, model: str, results: list[SeparatedFile], settings: dict) -> Path:
    """``out/separation.json``: the model, the settings and, per input, its folder and stem files."""
    data = {"model": model, "settings": settings, "items": [asdict(r) for r in results]}
    path = out / "separation.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def input_names(paths: Sequence[Path]) -> list[str]:
    """A folder name per input: its stem name, numbered when two inputs share one."""
    names, seen = [], {}
    for path in paths:
        base = path.stem or "input"
        count = seen.get(base, 0)
        seen[base] = count + 1
        names.append(base if count == 0 else f"{base}-{count + 1}")
    return names


def check_segment(segment: float | None, overlap: float) -> None:
    """``--segment`` (seconds, or None) and ``--overlap`` (a fraction in [0, 0.9]).

    Raises:
        ValueError: naming the flag and its range.
    """
    if segment is not None and not (math.isfinite(segment) and 0.1 <= segment <= 60):
        raise ValueError(f"--segment must be from 0.1 to 60 seconds, got {segment!r}")
    if not (math.isfinite(overlap) and 0 <= overlap <= 0.9):
        raise ValueError(f"--overlap must be a fraction from 0 to 0.9, got {overlap!r}")


#: The public name of :func:`read_info`.
read_audio_info = read_info
