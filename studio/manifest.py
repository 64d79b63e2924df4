"""The manifest that describes a folder of samples: which world, and the prompt of each file.

``mixstudio world`` and ``mixstudio generate`` write one; ``mixstudio eval`` reads one.

Format (``manifest.json``)::

    {"world": "shapes", "modality": "image", "meta": {...},
     "items": [{"file": "0000.png", "prompt": "a red circle", "seed": 1, "labels": {...}}, ...]}

``labels`` (optional) is the full ground truth of a world sample; generated samples have none.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from studio.io import atomic_write_text

MANIFEST_NAME = "manifest.json"


@dataclass(kw_only=True)
class ManifestItem:
    """One file of a sample folder."""

    file: str
    prompt: str
    seed: int | None = None
    labels: dict[str, str] | None = None


@dataclass(kw_only=True)
class Manifest:
    """A sample folder's description."""

    world: str
    modality: str
    items: list[ManifestItem]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        items = [{k: v for k, v in asdict(item).items() if v is not None} for item in self.items]
        return json.dumps(
            {"world": self.world, "modality": self.modality, "meta": self.meta, "items": items}, indent=2
        )


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    """Write ``folder/manifest.json`` atomically."""
    path = folder / MANIFEST_NAME
    atomic_write_text(path, manifest.to_json() + "\n")
    return path


def read_manifest(folder: str | Path) -> Manifest:
    """Read and validate ``folder/manifest.json``.

    Raises:
        ValueError: naming the folder or the item that is wrong and how to fix it.
    """
    from studio.worlds import WORLDS

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{str(folder)!r} is not a folder; pass a folder written by `mixstudio world` or `generate`")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ValueError(f"{str(folder)!r} has no {MANIFEST_NAME}; write one with a world name and a prompt per file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{str(path)!r} is not valid JSON ({err}); fix or regenerate the manifest") from None
    if not isinstance(data, dict) or not isinstance(data.get("items"), list) or not data["items"]:
        raise ValueError(f"{str(path)!r} must be an object with a non-empty 'items' list")
    world = data.get("world")
    if world not in WORLDS:
        raise ValueError(f"{str(path)!r}: world {world!r} is unknown; set 'world' to one of {sorted(WORLDS)}")
    items = [_read_item(path, folder, i, raw) for i, raw in enumerate(data["items"])]
    modality = data.get("modality") or WORLDS[world].modality
    if modality != WORLDS[world].modality:
        raise ValueError(
            f"{str(path)!r}: modality {modality!r} contradicts world {world!r}, whose samples are "
            f"{WORLDS[world].modality}; fix 'modality' or 'world'"
        )
    return Manifest(world=world, modality=modality, items=items, meta=data.get("meta") or {})


def _read_item(path: Path, folder: Path, index: int, raw: Any) -> ManifestItem:
    where = f"{str(path)!r} item {index}"
    if not isinstance(raw, dict):
        raise ValueError(f"{where} is not an object; give {{'file': ..., 'prompt': ...}}")
    file, prompt = raw.get("file"), raw.get("prompt")
    if not isinstance(file, str) or not file:
        raise ValueError(f"{where} has no 'file'; name the sample file relative to the folder")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where} ({file}) has no 'prompt'; give the prompt the sample was made for")
    resolved = (folder / file).resolve()
    if folder.resolve() not in resolved.parents:
        raise ValueError(f"{where}: file {file!r} lies outside the folder; use a path relative to the folder")
    labels = raw.get("labels")
    if labels is not None and not (isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())):
        raise ValueError(f"{where}: 'labels' must map attribute names to value names")
    seed = raw.get("seed")
    if seed is not None and not isinstance(seed, int):
        raise ValueError(f"{where}: 'seed' must be an integer")
    return ManifestItem(file=file, prompt=prompt, seed=seed, labels=labels)
