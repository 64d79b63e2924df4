"""File I/O that never leaves half-written outputs, and checked readers for user media.

Every output is written to a temporary sibling and renamed into place, so a crash or a
bad input leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000


#: Every folder mixstudio writes whole holds this file; only such folders (or empty ones) are replaced.
MARKER = ".mixstudio"
#: Pipeline classes whose folders older versions wrote without the marker.
OUR_PIPELINES = ("StudioImagePipeline", "StudioMusicPipeline")


def written_by_us(folder: Path) -> bool:
    """Whether ``folder`` is one mixstudio wrote: it holds the marker, or (written before the marker existed) a
    sample ``manifest.json`` with a world, or the ``model_index.json`` of one of our pipelines."""
    if (folder / MARKER).is_file():
        return True
    for index, key in (("manifest.json", "world"), ("model_index.json", "_class_name")):
        try:
            data = json.loads((folder / index).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and ((key == "world" and "world" in data) or data.get(key) in OUR_PIPELINES):
            return True
    return False


def check_output_dir(path: str | Path, *, name: str = "--out", force: bool = False) -> Path:
    """Validate that ``path`` can become an output folder, before any work: fail now, not after it.

    The destination is probed for real (a temporary sibling is created and removed: permission bits say yes to
    ``/proc`` as root), and an existing folder is only replaced when it is empty or mixstudio wrote it.

    Args:
        path: the folder to write (it may not exist yet; missing parents are created when writing).
        name: how the user named it (``--out``), for messages.
        force: also replace an existing folder mixstudio did not write.

    Raises:
        ValueError: one line naming ``path`` and the fix: a name that is no new folder (``.``, ``..``), an
            existing file, a folder of someone else's files (without ``force``), or a place that cannot be
            written (no permission, a read-only or virtual file system, a name too long).
    """
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise ValueError(f"{name} {str(path)!r} is not a new folder's name; give one such as out/run")
    try:
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise ValueError(f"{name} {str(path)!r} is a file, not a folder; pass a folder path")
        if path.is_dir() and not force and any(path.iterdir()) and not written_by_us(path):
            raise ValueError(
                f"{name} {str(path)!r} holds files mixstudio did not write; pick a new folder, empty it, or pass "
                "--force to replace it"
            )
        probe = tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=_existing_parent(path))
        os.rmdir(probe)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        shown = str(path) if len(str(path)) <= 80 else str(path)[:77] + "..."
        raise ValueError(f"{name} {shown!r} cannot be written here ({reason}); choose another folder") from None
    return path


def check_work_dir(path: str | Path, *, name: str) -> Path:
    """Validate a folder a command keeps writing into (a training run's folder, the app's working folder).

    Unlike :func:`check_output_dir` the folder is not replaced, so it may hold files already (a run to resume).

    Raises:
        ValueError: for a file at ``path`` or a place that cannot be written, naming ``path``.
    """
    path = Path(path)
    if path.name in ("", ".."):
        raise ValueError(f"{name} {str(path)!r} is not a folder's name; give one such as runs/mine")
    try:
        if path.exists() and not path.is_dir():
            raise ValueError(f"{name} {str(path)!r} is a file, not a folder; pass a folder path")
        probe = tempfile.mkdtemp(prefix=".probe-", dir=path if path.is_dir() else _existing_parent(path))
        os.rmdir(probe)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ValueError(f"{name} {str(path)!r} cannot be written here ({reason}); choose another folder") from None
    return path


def _existing_parent(path: Path) -> Path:
    """The nearest existing folder on the way to ``path`` (its parent when that exists)."""
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{str(parent)!r} is a file, so {str(path)!r} cannot be created; pass a folder path")
            return parent
    return Path("/")


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, name: str = "--out", force: bool = False) -> Iterator[Path]:
    """Build a folder in a temporary sibling, then move it into place (see :func:`check_output_dir`).

    An existing folder at ``path`` is replaced only after the new one is complete, and only if it is empty or
    mixstudio wrote it (or ``force``); on error the temporary folder is removed and ``path`` is untouched. The
    new folder holds :data:`MARKER`, so a later run may replace it.

    Raises:
        ValueError: from :func:`check_output_dir`, and for an OS error while moving the folder into place.
    """
    path = check_output_dir(path, name=name, force=force)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except OSError as err:
        raise ValueError(f"{name} {str(path)!r} cannot be written ({err.strerror}); choose another folder") from None
    try:
        yield tmp
        (tmp / MARKER).write_text(json.dumps({"written_by": "mixstudio"}) + "\n")
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode())


def write_png(path: Path, image: np.ndarray) -> None:
    """Save an ``(H, W, 3)`` uint8 image as PNG (atomically: a crash leaves no half-written file)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="PNG")
    atomic_write_bytes(Path(path), buffer.getvalue())


def read_image(path: str | Path, size: int | None = None, matte: tuple[int, int, int] | None = None) -> np.ndarray:
    """Read an RGB image as an ``(H, W, 3)`` uint8 array.

    Args:
        path: an image file PIL can read (PNG, JPEG, ...).
        size: if given, the required height and width in pixels.
        matte: if given, transparent pixels are composited over this colour (by default transparency is dropped).

    Raises:
        ValueError: for a missing or unreadable file, or a file of the wrong size.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"image {str(path)!r} does not exist; check the path or the manifest")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("RGB", "RGBA", "L", "P"):
                raise ValueError(f"image {str(path)!r} has mode {img.mode}; save it as an 8-bit RGB PNG")
            if matte is not None and (img.mode == "RGBA" or "transparency" in img.info):
                rgba = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, (*matte, 255)), rgba)
            array = np.array(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"image {str(path)!r} is not a readable image ({err}); pass a PNG or JPEG file") from None
    except Image.DecompressionBombError:
        raise ValueError(f"image {str(path)!r} claims a size too large to decode safely; pass a real image") from None
    if size is not None and array.shape[:2] != (size, size):
        raise ValueError(
            f"image {str(path)!r} is {array.shape[1]}x{array.shape[0]} px but this world's judge expects "
            f"{size}x{size}; resize it or score it with a judge trained at that size"
        )
    return array


def wav_bytes(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A mono float waveform ``(T,)`` in [-1, 1] encoded as a 16-bit PCM WAV file."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def write_wav(path: Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Save a mono float waveform ``(T,)`` in [-1, 1] as 16-bit PCM WAV (atomically)."""
    atomic_write_bytes(Path(path), wav_bytes(audio, sample_rate))


def as_written(audio: np.ndarray) -> np.ndarray:
    """The float32 waveform that :func:`read_wav` returns for ``audio`` after :func:`write_wav` (16-bit rounding).

    Scoring this in memory gives exactly what scoring the written file gives.
    """
    import soundfile as sf

    data, _ = sf.read(io.BytesIO(wav_bytes(audio)), dtype="float32", always_2d=True)
    return data[:, 0]


def read_wav(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read a mono WAV/FLAC file as a float32 ``(T,)`` waveform.

    Raises:
        ValueError: for a missing or unreadable file, several channels, or another sample rate.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"audio {str(path)!r} does not exist; check the path or the manifest")
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise ValueError(f"audio {str(path)!r} is not a readable WAV/FLAC file ({err}); pass a WAV file") from None
    if audio.shape[1] != 1:
        raise ValueError(f"audio {str(path)!r} has {audio.shape[1]} channels; mix it down to mono first")
    if audio.shape[0] == 0:
        raise ValueError(f"audio {str(path)!r} holds no samples; pass a file with sound in it")
    if not np.isfinite(audio).all():
        raise ValueError(f"audio {str(path)!r} holds NaN or inf samples; re-export it")
    if rate != sample_rate:
        raise ValueError(f"audio {str(path)!r} is {rate} Hz; resample it to {sample_rate} Hz first")
    return audio[:, 0]
