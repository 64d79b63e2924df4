"""Bad inputs for the CLI and the app: files and folders a hostile or careless user would hand over."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import soundfile as sf
import torch

from studio.adapters import DEFAULT_TARGETS, LoRAConfig, OFTConfig, add_adapter, delete_adapter, save_adapter
from studio.io import write_png
from studio.pipelines import load_pipeline


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels (a decompression bomb for a reader that trusts it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )


def sample_folder(folder: Path, world: str, files: dict[str, bytes | np.ndarray], **manifest) -> Path:
    """A samples folder: each file (PNG bytes, or a waveform written as WAV), and its manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if isinstance(data, bytes):
            (folder / name).write_bytes(data)
        elif data.ndim == 3:
            write_png(folder / name, data)
        else:
            sf.write(folder / name, data, manifest.pop("rate", 16000))
    items = manifest.pop("items", [{"file": name, "prompt": "a red circle"} for name in files])
    (folder / "manifest.json").write_text(json.dumps({"world": world, "items": items, **manifest}))
    return folder


@pytest.fixture(scope="session")
def bad(tmp_path_factory, tiny_shapes_folder):
    """Paths of the bad inputs, by name, made once per session."""
    root = tmp_path_factory.mktemp("bad")
    paths = {"root": root, "model": tiny_shapes_folder}
    foreign = root / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    paths["foreign"] = foreign
    (root / "a-file").write_text("not a folder")
    paths["file"] = root / "a-file"

    pipe = load_pipeline(tiny_shapes_folder)
    add_adapter(pipe.unet, "x", LoRAConfig(rank=2), DEFAULT_TARGETS, generator=torch.Generator().manual_seed(0))
    paths["adapter"] = save_adapter(pipe.unet, "x", root / "lora.safetensors", base_model_id=str(tiny_shapes_folder))
    delete_adapter(pipe.unet, "x")
    add_adapter(pipe.unet, "o", OFTConfig(block_size=4), DEFAULT_TARGETS)
    paths["oft-adapter"] = save_adapter(
        pipe.unet, "o", root / "oft.safetensors", base_model_id=str(tiny_shapes_folder)
    )
    delete_adapter(pipe.unet, "o")
    tensors = safetensors.torch.load_file(paths["adapter"])
    header = json.loads(safetensors.safe_open(str(paths["adapter"]), "pt").metadata()["studio_adapter"])
    nan = {k: torch.full_like(v, float("nan")) for k, v in tensors.items()}
    for name, data, meta in [
        ("nan-adapter", nan, {"studio_adapter": json.dumps(header)}),
        ("no-header", tensors, {}),
        ("bad-json", tensors, {"studio_adapter": "{not json"}),
        ("no-targets", tensors, {"studio_adapter": json.dumps({k: v for k, v in header.items() if k != "targets"})}),
    ]:
        path = root / f"{name}.safetensors"
        path.write_bytes(safetensors.torch.save(data, metadata=meta))
        paths[name] = path
    (root / "garbage.safetensors").write_bytes(b"\x00" * 64)
    paths["garbage"] = root / "garbage.safetensors"

    red = np.zeros((32, 32, 3), np.uint8)
    tone = np.sin(np.linspace(0, 2000, 32768)).astype(np.float32) * 0.3
    folders = {
        "no-manifest": None,
        "bad-json-manifest": None,
        "empty-items": sample_folder(root / "empty-items", "shapes", {}, items=[]),
        "unknown-world": sample_folder(root / "unknown-world", "mars", {"0.png": red}),
        "outside": sample_folder(root / "outside", "shapes", {}, items=[{"file": "../a-file", "prompt": "x"}]),
        "missing-file": sample_folder(root / "missing-file", "shapes", {}, items=[{"file": "0.png", "prompt": "x"}]),
        "no-prompt": sample_folder(root / "no-prompt", "shapes", {"0.png": red}, items=[{"file": "0.png"}]),
        "wrong-size": sample_folder(root / "wrong-size", "shapes", {"0.png": np.zeros((40, 40, 3), np.uint8)}),
        "not-png": sample_folder(root / "not-png", "shapes", {"0.png": b"garbage"}),
        "bomb": sample_folder(root / "bomb", "shapes", {"0.png": png_claiming(100_000, 100_000)}),
        "empty-wav": sample_folder(root / "empty-wav", "synth", {"0.wav": np.zeros(0, np.float32)}),
        "stereo-wav": sample_folder(root / "stereo-wav", "synth", {"0.wav": np.zeros((100, 2), np.float32)}),
        "8k-wav": sample_folder(root / "8k-wav", "synth", {"0.wav": tone}, rate=8000),
        "contradiction": sample_folder(root / "contradiction", "synth", {"0.wav": tone}, modality="image"),
        "bad-labels": sample_folder(
            root / "bad-labels", "shapes", {"0.png": red}, items=[{"file": "0.png", "prompt": "x", "labels": {"k": 1}}]
        ),
        "one-image": sample_folder(root / "one-image", "shapes", {"0.png": red}),
    }
    (root / "no-manifest").mkdir()
    (root / "bad-json-manifest").mkdir()
    (root / "bad-json-manifest" / "manifest.json").write_text("{broken")
    for name in ("no-manifest", "bad-json-manifest"):
        folders[name] = root / name
    paths.update(folders)
    return paths
