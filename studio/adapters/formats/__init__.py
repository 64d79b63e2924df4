"""Adapter file formats: export our adapters to what other tools load, and read their files back.

:data:`FORMATS` is the one table from a format's name to its exporter, importer and detector, and the methods it
holds exactly (docs/FORMATS.md has the measured differences in each foreign library):

============  =====================================================  ==========================================
format        what it is                                             methods
============  =====================================================  ==========================================
``peft``      folder: ``adapter_config.json`` + weights + card       lora, oft (no k×k convs), boft (1 factor), lokr
``diffusers`` folder: ``pytorch_lora_weights.safetensors`` + card    lora
``kohya``     file: ``lora_unet_*.lora_down/lora_up/alpha``          lora
``lycoris``   file: ``lora_unet_*.lokr_w1/lokr_w2/alpha``            lokr, diffusekrona (lora: the kohya layout)
``dense``     file: ``<module>.diff`` = ``W' - W`` per layer          every method, at its strength
============  =====================================================  ==========================================

A method a format cannot hold exactly is refused in one line naming the formats that can. OFT/BOFT do not map onto
LyCORIS's or kohya's OFT (they rotate the output side; we and PEFT rotate the input side), and ETHER/GOFT exist
nowhere else: ``dense`` holds them all.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import safetensors
import safetensors.torch
import torch
from torch import nn

from studio.adapters.formats import dense, lora_files, lycoris, peft
from studio.adapters.formats.common import (
    EXPORT_KEY,
    Adapter,
    BaseLayers,
    load_base_layers,
    make_host,
    read_safetensors,
)
from studio.adapters.io import HEADER_KEY, read_adapter, write_adapter
from studio.adapters.registry import METHODS
from studio.io import atomic_dir, atomic_write_text, check_output_dir

logger = logging.getLogger(__name__)


class Format(NamedTuple):
    """One adapter file format: how to write it, read it and recognise it, and the methods it holds exactly."""

    export: Callable[..., Any]
    """``export(adapter, host, out, force)``: write ``out`` (a file; for folder formats, the folder's files)."""
    read: Callable[[Path, BaseLayers | None], Adapter]
    """``read(path, base)``: our adapter from a file or folder of this format (``base``: the model, if known)."""
    detect: Callable[[Path, set[str]], bool]
    """``detect(path, keys)``: whether ``path`` (with these tensor keys; empty for a folder) is of this format."""
    methods: tuple[str, ...]
    folder: bool
    """Whether the format is a folder (written whole, with a ``README.md`` model card)."""


def _export_peft(adapter: Adapter, host, folder: Path, force: bool) -> None:
    config, tensors = peft.files(adapter, host, folder)
    (folder / peft.CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    safetensors.torch.save_file(tensors, str(folder / peft.WEIGHTS_NAME), metadata={"format": "pt"})


def _export_diffusers(adapter: Adapter, host, folder: Path, force: bool) -> None:
    tensors, metadata = lora_files.diffusers_tensors(host)
    safetensors.torch.save_file(tensors, str(folder / lora_files.DIFFUSERS_WEIGHTS), metadata=metadata)


def _export_lycoris(adapter: Adapter, host, out: Path, force: bool) -> Path:
    if adapter.method == "lora":  # LyCORIS's LoCon keys are kohya's
        return lora_files.export_kohya(adapter, host, out, force)
    return lycoris.export(adapter, host, out, force)


def _is_diffusers(path: Path, keys: set[str]) -> bool:
    if path.is_dir():
        return (path / lora_files.DIFFUSERS_WEIGHTS).is_file() and not (path / peft.CONFIG_NAME).is_file()
    return lora_files.detect_diffusers(path, keys)


#: The one table from format names to their exporter, importer, detector and the methods they hold exactly.
FORMATS: dict[str, Format] = {
    "peft": Format(_export_peft, peft.read, peft.detect, peft.METHODS, True),
    "diffusers": Format(_export_diffusers, lora_files.read_diffusers, _is_diffusers, ("lora",), True),
    "kohya": Format(lora_files.export_kohya, lora_files.read_kohya, lora_files.detect_kohya, ("lora",), False),
    "lycoris": Format(_export_lycoris, lycoris.read, lycoris.detect, ("lokr", "diffusekrona", "lora"), False),
    "dense": Format(dense.export, dense.read, dense.detect, tuple(METHODS), False),
}

#: Detection order: a LyCORIS file may also hold LoRA keys (refused there), so it is tried before kohya.
_DETECT_ORDER = ("peft", "diffusers", "lycoris", "kohya", "dense")


def formats_for(method: str) -> list[str]:
    """The formats that hold ``method`` exactly."""
    return [name for name, fmt in FORMATS.items() if method in fmt.methods]


def detect_format(path: str | Path) -> str:
    """``"mixstudio"`` for our own files, else the name in :data:`FORMATS` of the file or folder at ``path``.

    Raises:
        ValueError: for a missing path, an unreadable file, or keys of no known format (one line, naming a key).
    """
    path = Path(path)
    if path.is_dir():
        found = [name for name in _DETECT_ORDER if FORMATS[name].folder and FORMATS[name].detect(path, set())]
        if not found:
            raise ValueError(
                f"adapter folder {str(path)!r} holds neither {peft.CONFIG_NAME} (PEFT) nor "
                f"{lora_files.DIFFUSERS_WEIGHTS} (diffusers); pass an adapter file or such a folder"
            )
        return found[0]
    if not path.is_file():
        raise ValueError(f"adapter file {str(path)!r} does not exist; check the path")
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata, keys = handle.metadata() or {}, set(handle.keys())
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"adapter file {str(path)!r} is not a readable safetensors file ({err})") from None
    if HEADER_KEY in metadata:
        return "mixstudio"
    for name in _DETECT_ORDER:
        if FORMATS[name].detect(path, keys):
            return name
    if any(key.startswith(peft.PREFIX) for key in keys):
        raise ValueError(f"{str(path)!r} holds PEFT weights; pass the folder with its {peft.CONFIG_NAME} instead")
    example = sorted(keys)[0] if keys else "no tensors"
    raise ValueError(
        f"adapter file {str(path)!r} has no {HEADER_KEY!r} header and its keys match no known adapter format "
        f"({', '.join(FORMATS)}), e.g. {example!r}"
    )


def _read(path: Path, base: BaseLayers | None) -> Adapter:
    fmt = detect_format(path)
    if fmt == "mixstudio":
        return Adapter(*read_adapter(path))
    return FORMATS[fmt].read(path, base)


def read_any_adapter(
    path: str | Path, model: nn.Module | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The header and tensors (our layout) of an adapter file or folder of any known format, converted in memory.

    Args:
        path: a mixstudio adapter file, or a file or folder of a format in :data:`FORMATS`.
        model: the model it will be applied to: resolves kohya layer names exactly and checks shapes.
    """
    adapter = _read(Path(path), BaseLayers.of(model) if model is not None else None)
    return adapter.header, adapter.tensors


def export_adapter(
    adapter_file: str | Path,
    fmt: str,
    out: str | Path,
    base_model: str | Path | nn.Module | None = None,
    *,
    force: bool = False,
) -> Path:
    """Write the adapter at ``adapter_file`` in format ``fmt`` (a key of :data:`FORMATS`) to ``out``.

    Args:
        adapter_file: a mixstudio adapter file (or a file/folder of another format, converted on the way).
        fmt: ``peft``, ``diffusers``, ``kohya``, ``lycoris`` or ``dense``.
        out: the folder (``peft``, ``diffusers``; written whole with a ``README.md`` model card) or the
            ``.safetensors`` file (the others) to write, atomically.
        base_model: the base model (embedded name, pipeline or UNet folder, or the UNet module): needed by
            ``dense`` for multiplicative methods (``W' - W``), and for files without ``layer_shapes``; default: the
            header's ``base_model_id`` when that loads.
        force: replace an existing ``out`` that mixstudio did not write.

    Returns:
        ``out`` as a Path.

    Raises:
        ValueError: one line: an unknown format, a method the format cannot hold exactly (naming the formats that
            can), an unreadable file, a base model that does not fit, or an ``out`` that cannot be written.
    """
    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r} is unknown; use one of {list(FORMATS)}")
    path, out, spec = Path(adapter_file), Path(out), FORMATS[fmt]
    _check_out(out, spec.folder, force)
    base = load_base_layers(base_model)
    adapter = _read(path, base)
    if adapter.method not in spec.methods:
        raise ValueError(
            f"adapter {path.name!r} is {adapter.method}, which {fmt} cannot hold exactly; formats that hold "
            f"{adapter.method}: {formats_for(adapter.method)}"
        )
    need_weights = fmt == "dense" and not METHODS[adapter.method][1].additive
    shapes = adapter.header.get("layer_shapes") or {}
    missing_shapes = not all(t in shapes for t in adapter.header["targets"])
    if base is None and (need_weights or missing_shapes):
        base = _header_base(adapter)
    host = make_host(adapter, path, base, need_weights)
    try:
        if not spec.folder:
            return spec.export(adapter, host, out, force)
        with atomic_dir(out, name="--out", force=force) as tmp:
            spec.export(adapter, host, tmp, force)
            atomic_write_text(tmp / "README.md", model_card(adapter, fmt))
        return out
    finally:
        host.close()


def _header_base(adapter: Adapter) -> BaseLayers | None:
    """The base model the header names, when it loads here (else None: the caller asks for ``--base``)."""
    base_id = adapter.header.get("base_model_id")
    if not base_id:
        return None
    try:
        return load_base_layers(base_id)
    except ValueError as err:
        logger.info("base model %r of the adapter does not load here (%s)", base_id, err)
        return None


def _check_out(out: Path, folder: bool, force: bool) -> None:
    """Refuse an ``out`` that cannot be written, before any work."""
    if folder:
        check_output_dir(out, name="--out", force=force)
    elif out.suffix != ".safetensors":
        raise ValueError(
            f"--out {str(out)!r} must be a .safetensors file path for this format, e.g. style.safetensors"
        )


def import_adapter(
    path: str | Path, out: str | Path, base_model: str | Path | nn.Module | None = None, *, force: bool = False
) -> Path:
    """Convert an adapter file or folder of any format in :data:`FORMATS` into a mixstudio adapter file.

    The format is detected from the keys, the header and the config files. With ``base_model`` the layer names are
    resolved against it and every tensor is checked to fit it; without, kohya names are read by the diffusers
    naming rules and the check happens when the adapter is loaded.

    Args:
        path: the file or folder to read.
        out: the ``.safetensors`` file to write (atomically; an existing file only if mixstudio wrote it, or
            ``force``).
        base_model: the base model (embedded name, pipeline or UNet folder, or the UNet module).

    Returns:
        ``out`` as a Path.

    Raises:
        ValueError: one line: a missing or unreadable input, keys of no known format, a layer or option with no
            exact counterpart, a base model the adapter does not fit, or an ``out`` that cannot be written.
    """
    path, out = Path(path), Path(out)
    _check_out(out, folder=False, force=force)
    if out.exists() and not force:
        try:
            read_adapter(out)
        except ValueError:
            raise ValueError(
                f"--out {str(out)!r} exists and is no mixstudio adapter; pick a new name or pass --force"
            ) from None
    base = load_base_layers(base_model)
    adapter = _read(path, base)
    if base is not None:
        make_host(adapter, path, base, need_weights=False).close()  # every tensor fits the base model
    if not adapter.header.get("layer_shapes"):
        adapter.header.pop("layer_shapes", None)
    return write_adapter(out, adapter.header, adapter.tensors)


def model_card(adapter: Adapter, fmt: str) -> str:
    """A Hugging Face Hub model card (YAML front matter: library_name, base_model, tags, license) for an export."""
    header = adapter.header
    base = header.get("base_model_id") or ""
    hub_id = bool(re.fullmatch(r"[\w.-]+/[\w.-]+", base)) and not Path(base).exists()
    library = "peft" if fmt == "peft" else "diffusers"
    tags = ["mixstudio", adapter.method, "diffusers", "text-to-image"] + (["lora"] if adapter.method == "lora" else [])
    lines = ["---", f"library_name: {library}"]
    lines.append(
        f"base_model: {base}" if hub_id else f"# base_model: set the Hub id of the base model ({base or '?'})"
    )
    lines += ["tags:", *[f"- {tag}" for tag in dict.fromkeys(tags)], "license: other", "---", ""]
    name = header.get("name", "adapter")
    config = json.dumps(header.get("config", {}))
    usage = (
        f'from peft import PeftModel\nunet = PeftModel.from_pretrained(unet, "{name}")'
        if fmt == "peft"
        else f'pipe.load_lora_weights("{name}")  # or the {lora_files.DIFFUSERS_WEIGHTS} file'
    )
    lines += [
        f"# {name}",
        "",
        f"A {adapter.method} adapter of the UNet, exported by mixstudio (`mixstudio adapter export --format {fmt}`).",
        f"Base model: `{base or 'unknown'}`. Configuration: `{config}`. Strength is folded into the weights.",
        "",
        "## Use",
        "",
        "```python",
        usage,
        "```",
        "",
    ]
    return "\n".join(lines)


__all__ = [
    "EXPORT_KEY",
    "FORMATS",
    "Format",
    "detect_format",
    "export_adapter",
    "formats_for",
    "import_adapter",
    "model_card",
    "read_any_adapter",
    "read_safetensors",
]
