"""Hybrid Demucs (Défossez 2021) as a :class:`~studio.separation.base.Separator`, and a loader of real checkpoints.

The architecture is torchaudio's :class:`torchaudio.models.HDemucs` (a U-Net with a spectrogram branch and a
waveform branch that merge at the bottom), wrapped so it saves and loads like every other separator
(``config.json`` + safetensors) and speaks the separator contract.

Sizing for the ``synth`` world (16 kHz mono, drums/bass/lead). torchaudio's presets are ``hdemucs_low``
(nfft 1024, depth 5, "around 8 kHz"), ``hdemucs_medium`` (nfft 2048, depth 6, 16-32 kHz, untested upstream) and
``hdemucs_high`` (nfft 4096, depth 6, 44.1 kHz; 48 channels, 84 M parameters). We keep the low preset's
nfft 1024 / depth 5: at 16 kHz that is a 64 ms window and a 16 ms hop, the same STFT as our BSRNN; four levels
take the 512 frequency bins down to one (512 → 128 → 32 → 8 → 1), where the waveform branch merges in, and the
fifth works on the merged sequence.
``channels=16`` (against 48) gives 2.2 M parameters (9 MB), the same order as the default BSRNN; it separates
60 s of 16 kHz mono at 27-30x real time on 2 threads and 29-31x on 1 (``benchmarks/bench_separation.py``, a
2-core AMD EPYC shared with other jobs), a little slower than the BSRNN.

Real checkpoints: :func:`load_hdemucs_checkpoint` reads a folder with an HDemucs state dict as ``.safetensors``
and a JSON config; :func:`save_hdemucs_checkpoint` writes one from a torchaudio model, e.g. the MUSDB-HQ
weights (downloaded by torchaudio once, on a machine that has the internet)::

    from torchaudio.pipelines import HDEMUCS_HIGH_MUSDB
    model = HDEMUCS_HIGH_MUSDB.get_model()  # sources drums, bass, other, vocals
    save_hdemucs_checkpoint(model, "hdemucs-high-musdb", sample_rate=44100, architecture={"nfft": 4096, "depth": 6})

after which ``separate(load_hdemucs_checkpoint("hdemucs-high-musdb"), stereo_44k, 44100)`` gives four stems.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import register_to_config
from safetensors.torch import load_file, save_file
from torch.nn import functional as F
from torchaudio.models import HDemucs

from studio.io import atomic_dir, atomic_write_text
from studio.separation.base import SYNTH_SOURCES, Separator, check_contract

#: Segment used when a checkpoint's JSON names none: torchaudio's HDemucs tutorial separates in 10 s chunks.
CHECKPOINT_SEGMENT_SECONDS = 10.0
#: ``HDemucs.__init__`` arguments a checkpoint's JSON may set (besides ``sources`` and ``audio_channels``).
ARCHITECTURE_ARGS = tuple(p for p in inspect.signature(HDemucs.__init__).parameters if p not in ("self", "sources"))


class HDemucsSeparator(Separator):
    """torchaudio's HDemucs in the separator contract.

    Args:
        sources, sample_rate, audio_channels, segment_samples: the separator contract.
        nfft: STFT size of the spectrogram branch (hop ``nfft // 4``).
        depth: encoder/decoder levels; must bring the ``nfft // 2`` bins down to 1 (see :func:`min_depth`).
        channels: hidden channels of the first level.
        growth: channel growth per level.
        options: further ``HDemucs`` arguments by name (e.g. ``{"dconv_lstm": 3}``); None for the defaults.
    """

    @register_to_config
    def __init__(
        self,
        sources: Sequence[str] = SYNTH_SOURCES,
        sample_rate: int = 16_000,
        audio_channels: int = 1,
        segment_samples: int = 24_000,
        nfft: int = 1024,
        depth: int = 5,
        channels: int = 16,
        growth: int = 2,
        options: dict[str, Any] | None = None,
    ):
        super().__init__()
        check_contract(sources, sample_rate, audio_channels, segment_samples)
        options = dict(options or {})
        settable = sorted(set(ARCHITECTURE_ARGS) - {"audio_channels", "nfft", "depth", "channels", "growth"})
        unknown = sorted(set(options) - set(settable))
        if unknown:
            raise ValueError(f"HDemucs options {unknown} are not settable through options; use some of {settable}")
        if nfft < 16 or nfft % 4 or depth < min_depth(nfft, options.get("kernel_size", 8), options.get("stride", 4)):
            raise ValueError(
                f"HDemucs needs nfft a multiple of 4 (>= 16) and depth >= {min_depth(max(nfft, 16))} to merge its "
                f"two branches, got nfft={nfft}, depth={depth}; e.g. nfft=1024 with depth=5 or nfft=4096 with depth=6"
            )
        self.model = HDemucs(
            sources=list(sources),
            audio_channels=audio_channels,
            channels=channels,
            growth=growth,
            nfft=nfft,
            depth=depth,
            **options,
        )

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """Separate ``mix`` ``(B, C, T)`` into ``(B, S, C, T)``; inputs shorter than ``nfft`` are zero-padded."""
        self.check_mix(mix)
        length = mix.shape[-1]
        # HDemucs's reflect-padded STFT refuses inputs shorter than about 1.5 hops; zeros after the end are silence
        padded = F.pad(mix, (0, max(0, self.config.nfft - length)))
        return self.model(padded)[..., :length]


def min_depth(nfft: int, kernel_size: int = 8, stride: int = 4) -> int:
    """The fewest HDemucs levels that take ``nfft // 2`` frequency bins down to 1 (where the branches merge)."""
    freqs, depth = nfft // 2, 0
    while freqs > 1:
        freqs = 1 if freqs <= kernel_size else freqs // stride
        depth += 1
    return depth


def save_hdemucs_checkpoint(
    model: HDemucs,
    folder: str | Path,
    *,
    sample_rate: int,
    architecture: dict[str, Any],
    segment_seconds: float | None = None,
) -> Path:
    """Write a torchaudio ``HDemucs`` as a checkpoint folder: ``model.safetensors`` + ``config.json``.

    Args:
        model: the torchaudio model (e.g. ``HDEMUCS_HIGH_MUSDB.get_model()``).
        folder: the folder to write (replaced atomically).
        sample_rate: the rate the weights were trained at (44100 for the MUSDB bundles).
        architecture: the ``HDemucs.__init__`` arguments it was built with besides sources and audio channels
            (``{"nfft": 4096, "depth": 6}`` for ``hdemucs_high``); the model does not record them all itself.
        segment_seconds: the chunk length to separate in (None: 10 s when loaded).

    Returns:
        the folder.
    """
    config = {"sources": list(model.sources), "sample_rate": sample_rate, "audio_channels": model.audio_channels}
    config |= dict(architecture)
    if segment_seconds is not None:
        config["segment_seconds"] = segment_seconds
    _check_checkpoint_config(config, Path(folder))
    with atomic_dir(folder, name="folder") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        atomic_write_text(tmp / "config.json", json.dumps(config, indent=2) + "\n")
    return Path(folder)


def load_hdemucs_checkpoint(folder: str | Path) -> HDemucsSeparator:
    """Load an HDemucs checkpoint folder (one ``.safetensors`` state dict + ``config.json``) as a separator.

    The JSON holds ``sources``, ``sample_rate`` and ``audio_channels``, optionally ``segment_seconds`` (default
    10 s), and the ``HDemucs.__init__`` arguments the weights were built with (``nfft``, ``depth``,
    ``channels``, ``growth``, …; omitted ones take torchaudio's defaults). A folder written by
    ``HDemucsSeparator.save_pretrained`` loads too. Weights are read with safetensors; nothing is unpickled.

    Raises:
        ValueError: for a missing or malformed config, not exactly one ``.safetensors`` file, unknown config
            keys, or weights that do not fit the architecture the config describes.
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ValueError(
            f"HDemucs checkpoint {str(folder)!r} has no config.json; write one with save_hdemucs_checkpoint"
        )
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(config_path)!r} is not valid JSON ({err}); fix or rewrite it") from None
    if config.get("_class_name") == HDemucsSeparator.__name__:
        return HDemucsSeparator.from_pretrained(folder)
    _check_checkpoint_config(config, folder)
    weights = sorted(folder.glob("*.safetensors"))
    if len(weights) != 1:
        raise ValueError(
            f"HDemucs checkpoint {str(folder)!r} must hold exactly one .safetensors file, found "
            f"{[w.name for w in weights]}; keep the state dict alone in the folder"
        )
    arch = {k: v for k, v in config.items() if k in ARCHITECTURE_ARGS and k != "audio_channels"}
    main = {k: arch.pop(k) for k in ("nfft", "depth", "channels", "growth") if k in arch}
    rate = int(config["sample_rate"])
    segment = float(config.get("segment_seconds", CHECKPOINT_SEGMENT_SECONDS))
    separator = HDemucsSeparator(
        sources=list(config["sources"]),
        sample_rate=rate,
        audio_channels=int(config["audio_channels"]),
        segment_samples=math.ceil(segment * rate),
        **{"nfft": 4096, "depth": 6, "channels": 48, "growth": 2} | main,  # torchaudio's HDemucs defaults
        options=arch or None,
    )
    try:
        separator.model.load_state_dict(load_file(weights[0]))
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:400]
        raise ValueError(
            f"weights {str(weights[0])!r} do not fit the architecture in {str(config_path)!r} ({detail}); "
            "check sources, audio_channels, nfft, depth and channels"
        ) from None
    return separator.eval()


def _check_checkpoint_config(config: dict[str, Any], folder: Path) -> None:
    required = {"sources", "sample_rate", "audio_channels"}
    missing = sorted(required - set(config))
    unknown = sorted(set(config) - required - set(ARCHITECTURE_ARGS) - {"segment_seconds"})
    if missing or unknown:
        raise ValueError(
            f"HDemucs checkpoint config in {str(folder)!r}: missing {missing}, unknown {unknown}; it needs "
            f"{sorted(required)} and may set segment_seconds and {list(ARCHITECTURE_ARGS)}"
        )
    segment = config.get("segment_seconds", CHECKPOINT_SEGMENT_SECONDS)
    if not isinstance(segment, int | float) or segment <= 0:
        raise ValueError(f"segment_seconds in {str(folder)!r} must be a positive number, got {segment!r}")
