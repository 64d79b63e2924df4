"""Uploaded models: a zipped pipeline folder, size-limited and checked before anything is written.

An archive may hold only configs and safetensors weights (never pickles), only under one folder with a
``model_index.json`` whose components come from known libraries; it is unpacked into a temporary sibling
of its destination, loaded once to prove it works, and only then moved into place.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import studio

MAX_UPLOAD_BYTES = 20 * 2**20
#: Files an imported pipeline may hold: weights as safetensors (never pickles) and configs.
UPLOAD_SUFFIXES = (".json", ".safetensors", ".txt", ".md")
#: Libraries a model_index.json may name (diffusers imports each component's class from its library).
UPLOAD_LIBRARIES = ("diffusers", "transformers", "studio.models.audio")


def import_pipeline_zip(
    archive: str | Path,
    out: Path,
    max_bytes: int = MAX_UPLOAD_BYTES,
    progress: Callable[[float, str], None] | None = None,
) -> Path:
    """Unpack a zipped pipeline folder into ``out`` (atomically) after checking it.

    Args:
        archive: the uploaded ``.zip`` file.
        out: destination folder (must not exist yet; the caller picks a name inside its workdir).
        max_bytes: largest archive accepted; the unpacked size may be at most five times this.
        progress: called with ``(fraction, description)`` before unpacking and before the load check.

    Returns:
        ``out``.

    Raises:
        ValueError: for a missing file, a file over the limit, not a zip, members that escape the folder or
            are not configs or safetensors, no single ``model_index.json``, a component library outside
            ``UPLOAD_LIBRARIES``, or a pipeline that does not load. Nothing is left behind on failure.
    """
    archive = Path(archive)
    if not archive.is_file():
        raise ValueError(f"upload {archive.name!r} is missing; upload the file again")
    size = archive.stat().st_size
    if size > max_bytes:
        raise ValueError(f"upload is {size / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB")
    if not zipfile.is_zipfile(archive):
        raise ValueError(f"upload {archive.name!r} is not a zip archive; zip the pipeline folder")
    report = progress or (lambda fraction, desc: None)
    try:
        _unpack(archive, out, max_bytes, report)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise ValueError(f"upload {archive.name!r} is a damaged zip archive ({err}); zip the folder again") from None
    return out


def _unpack(archive: Path, out: Path, max_bytes: int, report: Callable[[float, str], None]) -> None:
    """Unpack the checked archive into ``out`` (written whole) and check that the pipeline loads."""
    with zipfile.ZipFile(archive) as zf, studio.atomic_dir(out, name="model name") as tmp:
        root = _checked_root(zf, 5 * max_bytes)
        report(0.0, "unpacking")
        for member in zf.infolist():
            if not member.is_dir():
                target = tmp / Path(member.filename).relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(member))
        _check_model_index(tmp / "model_index.json")
        report(0.5, "checking that the pipeline loads")
        studio.load_pipeline(tmp, studio.model_modality(tmp))  # refuse now what would fail to load later


def _checked_root(zf: zipfile.ZipFile, max_total: int) -> Path:
    """The archive's pipeline folder (``.`` or its single top folder); refuses unsafe or disallowed members."""
    files = [m for m in zf.infolist() if not m.is_dir()]
    total = sum(m.file_size for m in files)
    if total > max_total:
        raise ValueError(f"the archive unpacks to {total / 2**20:.0f} MB; the limit is {max_total / 2**20:.0f} MB")
    for member in files:
        path = Path(member.filename)
        if path.is_absolute() or ".." in path.parts or "\\" in member.filename:
            raise ValueError(f"archive member {member.filename!r} points outside the folder; re-zip the folder")
        if path.suffix not in UPLOAD_SUFFIXES and path.name != "pipeline.py":  # pipeline.py: checked when loading
            raise ValueError(f"archive member {member.filename!r} is not allowed; only {list(UPLOAD_SUFFIXES)} files")
    indexes = [Path(m.filename) for m in files if Path(m.filename).name == "model_index.json"]
    if len(indexes) != 1 or len(indexes[0].parts) > 2:
        raise ValueError("the archive must hold one pipeline folder with a model_index.json at its top")
    root = indexes[0].parent
    if any(root not in Path(m.filename).parents for m in files):
        raise ValueError("the archive holds files outside the pipeline folder; zip only that folder")
    return root


def _check_model_index(path: Path) -> None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"model_index.json is not valid JSON ({err}); re-save the pipeline") from None
    if not isinstance(data, dict):
        raise ValueError("model_index.json must be a JSON object; re-save the pipeline")
    for key, value in data.items():
        if key == "_class_name":  # ["pipeline", class]: the loader runs only the studio's own pipeline.py
            continue
        if isinstance(value, list) and value and value[0] is not None and value[0] not in UPLOAD_LIBRARIES:
            raise ValueError(f"model_index.json component {key!r} comes from {value[0]!r}; allowed {UPLOAD_LIBRARIES}")
