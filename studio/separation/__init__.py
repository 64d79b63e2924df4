"""Music source separation: separators (one file per family), overlap-add over long inputs, blends.

``SEPARATORS`` is the one place a separator name maps to its class; :func:`load_separator` opens any saved
separator folder (or a converted torchaudio HDemucs checkpoint) and :func:`separate` applies it to audio of
any length, rate and channel count. SDR evaluation lives in :mod:`studio.evaluation.separation`.
"""

from __future__ import annotations

import json
from pathlib import Path

from studio.separation.apply import check_audio, overlap_add, separate
from studio.separation.base import SYNTH_SOURCES, Separator, check_contract
from studio.separation.blend import BlendSeparator, blend_weights, fit_blend
from studio.separation.bsrnn import BandSplitRNN, band_edges
from studio.separation.families import MEMBERS
from studio.separation.hdemucs import HDemucsSeparator, load_hdemucs_checkpoint, save_hdemucs_checkpoint
from studio.separation.msdm import MultiSourceDiffusion, SeparationOptions

#: Separator families by name (``SeparateConfig.model`` and the CLI pick from these): the blendable families
#: (``families.MEMBERS``), the blend, and multi-source diffusion (trained by ``mixstudio train msdm-synth``; not
#: blendable: it samples, so its estimates are draws rather than one deterministic answer).
SEPARATORS: dict[str, type[Separator]] = {**MEMBERS, "blend": BlendSeparator, "msdm": MultiSourceDiffusion}


def separator_class(class_name: str | None) -> type[Separator]:
    """The separator class saved as ``_class_name`` in a config.

    Raises:
        ValueError: for a class that is not in :data:`SEPARATORS`.
    """
    by_class = {cls.__name__: cls for cls in SEPARATORS.values()}
    if class_name not in by_class:
        raise ValueError(f"{class_name!r} is not a separator class; known: {sorted(by_class)}")
    return by_class[class_name]


def open_separator(name: str | Path) -> Separator:
    """A shipped separator by name (``synth-sep``) or a separator folder (a converted HDemucs checkpoint too).

    Raises:
        ValueError: for a name that is neither shipped nor a folder, and what :func:`load_separator` refuses.
    """
    from studio.models.zoo import EMBEDDED_SEPARATORS, separator_dir

    folder = separator_dir(str(name)) if str(name) in EMBEDDED_SEPARATORS else Path(name)
    if not folder.is_dir():
        known = ", ".join(sorted(EMBEDDED_SEPARATORS))
        raise ValueError(f"separator {str(name)!r} is neither an embedded separator ({known}) nor a folder")
    return load_separator(folder)


def load_separator(folder: str | Path) -> Separator:
    """Load a separator folder written by ``save_pretrained`` (any family), or an HDemucs checkpoint folder.

    A ``config.json`` without ``_class_name`` is read as a converted torchaudio HDemucs checkpoint (see
    :func:`~studio.separation.hdemucs.load_hdemucs_checkpoint`). The model comes back in eval mode.

    Raises:
        ValueError: for a folder without ``config.json`` or one naming an unknown class.
    """
    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(f"{str(folder)!r} is not a separator folder (no config.json); pass a saved model folder")
    try:
        name = json.loads(path.read_text()).get("_class_name")
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(path)!r} is not valid JSON ({err}); fix or rewrite it") from None
    if name is None:
        return load_hdemucs_checkpoint(folder)
    return separator_class(name).from_pretrained(folder).eval()


__all__ = [
    "SEPARATORS",
    "SYNTH_SOURCES",
    "BandSplitRNN",
    "BlendSeparator",
    "HDemucsSeparator",
    "MultiSourceDiffusion",
    "SeparationOptions",
    "Separator",
    "band_edges",
    "blend_weights",
    "check_audio",
    "check_contract",
    "fit_blend",
    "load_hdemucs_checkpoint",
    "load_separator",
    "open_separator",
    "overlap_add",
    "save_hdemucs_checkpoint",
    "separate",
    "separator_class",
]
