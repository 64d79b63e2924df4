"""Apply adapter files to a model: ours, or any format ``studio.adapters.formats`` reads, converted in memory.

``load_adapter`` accepts every format of :data:`~studio.adapters.formats.FORMATS` (a mixstudio file, a PEFT or
diffusers folder, a diffusers, kohya/A1111, LyCORIS or dense ``.safetensors`` file): the format is detected from the
file, converted in memory to our layout, checked against the model and applied, each file at its own strength.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

from torch import nn

from studio.adapters.formats import read_any_adapter
from studio.adapters.inject import delete_adapter, set_adapter_scale
from studio.adapters.io import apply_adapter


def load_adapter(
    model: nn.Module, path: str | Path, name: str | None = None, base_model_id: str | None = None
) -> list[str]:
    """Inject the adapter at ``path`` into ``model`` and load its tensors and strength.

    Args:
        model: the base model (modified in place).
        path: a file written by :func:`~studio.adapters.save_adapter`, or a file or folder of another format in
            ``studio.adapters.formats.FORMATS`` (detected from its keys, header and config files).
        name: the adapter name in ``model``; default: the saved name (the file's stem for other formats).
        base_model_id: if given and the file names a different base model, refuse.

    Returns:
        The wrapped module names.

    Raises:
        ValueError: for an unreadable file or one of no known format, a mismatched base model id, missing target
            modules or shape mismatches; the model is not modified in those cases.
    """
    path = Path(path)
    header, tensors = read_any_adapter(path, model)
    return apply_adapter(model, path, header, tensors, name=name, base_model_id=base_model_id)


def load_adapters(
    unet: nn.Module, adapters: Sequence[tuple[str | Path, float]], *, base_model_id: str | None = None
) -> list[str]:
    """Load each file as adapter ``merge-<i>`` at its strength; on any error remove those loaded and re-raise."""
    names: list[str] = []
    try:
        for i, (path, strength) in enumerate(adapters):
            if not math.isfinite(strength):
                raise ValueError(f"adapter strength must be a finite number, got {strength} for {Path(path).name!r}")
            name = f"merge-{i}"
            load_adapter(unet, path, name=name, base_model_id=base_model_id)
            names.append(name)
            set_adapter_scale(unet, name, float(strength))
    except BaseException:
        for name in reversed(names):
            delete_adapter(unet, name)
        raise
    return names


@contextlib.contextmanager
def applied_adapters(
    unet: nn.Module, adapters: Sequence[tuple[str | Path, float]], *, base_model_id: str | None = None
) -> Iterator[list[str]]:
    """Context: the adapter files on ``unet``, file ``i`` at strength ``w_i``; removed again on exit.

    Args:
        unet: the model (modified inside the context only, also when the body raises).
        adapters: ``(adapter file or folder, strength)`` pairs, each of any format ``load_adapter`` reads; an
            empty list leaves ``unet`` as it is.
        base_model_id: refuse files saved for another base model (:func:`load_adapter`'s check).

    Yields:
        The adapter names used on ``unet``.

    Raises:
        ValueError: for a file that does not fit ``unet`` or a non-finite strength (nothing stays applied).
    """
    names = load_adapters(unet, adapters, base_model_id=base_model_id)
    try:
        yield names
    finally:
        for name in reversed(names):
            delete_adapter(unet, name)
