"""The app's Separate tab: split an uploaded file, a clip made in the Music tab, or a ``synth`` world clip (whose true
stems are known, so the SDR table can be shown) into stems. :class:`SeparateActions` is a part of
:class:`~studio.app.service.Studio`."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import studio
from studio.app.inputs import Progress, check_int
from studio.app.models import ModelCatalog

logger = logging.getLogger(__name__)

#: The longest upload the app separates (minutes): one CPU server, shared by its users.
MAX_UPLOAD_MINUTES = 10
#: Generated clips offered in the picker, newest first.
MAX_CLIPS_LISTED = 50
SOURCES = ("upload", "clip", "world")


@dataclass
class Separation:
    """Stems of one separated input, their spectrograms, and the scores when the true stems are known.

    Attributes:
        folder: ``separations/<stamp>/`` (the stems, ``input.wav`` and ``separation.json`` inside).
        stems: stem name -> WAV file.
        spectrograms: stem name -> ``(H, F, 3)`` uint8 picture.
        sample_rate: the stems' rate (the input's).
        scores: SDR (v4), new SDR, SI-SDR and SI-SDRi per stem and mean, for a world clip; None otherwise.
        source: what was separated, in words.
    """

    folder: Path
    stems: dict[str, Path]
    spectrograms: dict[str, np.ndarray]
    sample_rate: int
    scores: dict[str, float] | None
    source: str


class SeparateActions:
    """Separation in the app, a part of :class:`~studio.app.service.Studio` (its workdir, lock and catalog)."""

    workdir: Path
    models: ModelCatalog
    _lock: threading.RLock

    def list_separators(self) -> list[str]:
        """Shipped separators that are present, then separator folders under ``runs/`` (``runs/<run>/model``)."""
        names = [name for name in studio.EMBEDDED_SEPARATORS if _shipped(name)]
        runs = self.workdir / "runs"
        configs = [*runs.glob("*/config.json"), *runs.glob("*/*/config.json")] if runs.is_dir() else []
        for config in sorted(configs):
            if '"_class_name"' in config.read_text() and _is_separator(config):
                names.append("runs/" + config.parent.relative_to(runs).as_posix())
        return names

    def music_clips(self) -> list[str]:
        """Clips made in the Music tab, by name (``outputs/music/<stamp>/0000.wav``), newest first."""
        root = self.workdir / "outputs" / "music"
        clips = sorted(root.glob("*/*.wav"), key=lambda p: p.stat().st_mtime, reverse=True) if root.is_dir() else []
        return [p.relative_to(self.workdir).as_posix() for p in clips[:MAX_CLIPS_LISTED]]

    def separate(
        self,
        model: str,
        source: str,
        *,
        upload: str | None = None,
        clip: str | None = None,
        world_seed: int | None = None,
        progress: Progress | None = None,
    ) -> Separation:
        """Separate one input with a listed separator into ``separations/<stamp>/``.

        Args:
            model: a name from :meth:`list_separators`.
            source: ``upload`` (the uploaded file), ``clip`` (a name from :meth:`music_clips`) or ``world`` (the
                ``synth`` world's clip of ``world_seed``, scored against its true stems).
            progress: called with ``(fraction, description)``.

        Raises:
            ValueError: for an unknown separator, source or clip, a missing or unreadable upload, one longer than
                ``MAX_UPLOAD_MINUTES``, or a seed out of range.
        """
        if model not in self.list_separators():
            raise ValueError(f"unknown separator {model!r}; pick one of {self.list_separators()}")
        if source not in SOURCES:
            raise ValueError(f"source must be one of {list(SOURCES)}, got {source!r}")
        truth = None
        if source == "upload":
            if not upload:
                raise ValueError("no file uploaded; choose a WAV or FLAC file")
            path = Path(upload)
            rate, _, frames = studio.read_audio_info(path)
            if frames > MAX_UPLOAD_MINUTES * 60 * rate:
                raise ValueError(
                    f"the upload is {frames / rate / 60:.1f} minutes; the app takes up to {MAX_UPLOAD_MINUTES}"
                )
            label = f"upload {path.name}"
        elif source == "clip":
            if clip not in self.music_clips():
                raise ValueError(f"unknown clip {clip!r}; pick one made in the Music tab (refresh the list)")
            path, label = self.workdir / clip, f"clip {clip}"
        else:
            check_int("world clip seed", world_seed, 0, 2**31 - 1)
            path, truth = None, studio.get_world("synth").sample(world_seed)
            label = f"synth world clip, seed {world_seed}"
        folder = self.workdir / "separations" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        with self._lock:
            separator = self._separator(model)
            return _run(separator, folder, path, truth, label, progress)

    def _separator(self, name: str) -> studio.Separator:
        key = (name, self._separator_version(name))
        cache = self.__dict__.setdefault("_separators", {})
        if key not in cache:
            cache.clear()  # one separator at a time: they are small, and the server's memory is not
            source = name if not name.startswith("runs/") else str(self.workdir / name)
            cache[key] = studio.open_separator(source)
        return cache[key]

    def _separator_version(self, name: str) -> int:
        folder = self.workdir / name if name.startswith("runs/") else None
        return (folder / "config.json").stat().st_mtime_ns if folder is not None else 0


def _shipped(name: str) -> bool:
    try:
        studio.open_separator(name)
    except ValueError:
        return False
    return True


def _is_separator(config: Path) -> bool:
    try:
        name = json.loads(config.read_text()).get("_class_name")
    except (OSError, ValueError):
        return False
    return name in {cls.__name__ for cls in studio.SEPARATORS.values()}


def _run(separator, folder: Path, path: Path | None, truth, label: str, progress: Progress | None) -> Separation:
    """Separate ``path`` (or the world sample ``truth``) into ``folder``, written whole; score it if ``truth``."""
    import soundfile as sf
    import torch

    report = progress or (lambda fraction, desc: None)
    with studio.atomic_dir(folder, name="separation folder") as tmp:
        input_path = tmp / "input.wav"
        if truth is not None:
            studio.write_wav(input_path, truth.data, 16_000)
        else:
            input_path.write_bytes(path.read_bytes())
        plan = studio.stem_plan(separator.sources, None, None)
        done = studio.separate_file(
            separator, input_path, tmp, plan=plan, progress=lambda f: report(0.9 * f, "separating")
        )
        studio.write_separation_manifest(tmp, label, [done], {"source": label})
        scores = None
        if truth is not None:
            report(0.95, "scoring against the true stems")
            est = torch.stack([torch.from_numpy(sf.read(tmp / f, dtype="float32", always_2d=True)[0].T)
                               for f in done.stems.values()])  # fmt: skip
            ref = torch.stack([torch.from_numpy(truth.extras["stems"][s][None]) for s in plan])
            mix = torch.from_numpy(truth.data[None])
            scores = studio.separation_scores(est[None], ref[None].float(), mix[None], done.sample_rate, list(plan))
    stems = {name: folder / file for name, file in done.stems.items()}
    pictures = {}
    for name, file in stems.items():
        audio, rate = sf.read(file, dtype="float32", always_2d=True)
        pictures[name] = studio.spectrogram_image(audio.mean(1), rate)
    report(1.0, "done")
    return Separation(folder, stems, pictures, done.sample_rate, scores, label)
