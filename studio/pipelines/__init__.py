"""Drop-in diffusers pipelines and the loader that resolves embedded names, paths and hub ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

from studio.models.zoo import EMBEDDED, model_dir
from studio.pipelines.base import (
    SCHEDULERS,
    RefusedFolder,
    StudioDiffusionPipeline,
    class_name,
    make_scheduler,
    read_index,
)
from studio.pipelines.image import StudioImagePipeline
from studio.pipelines.music import MusicPipelineOutput, StudioMusicPipeline

Modality = Literal["image", "audio"]

#: The one place a modality maps to its pipeline class.
PIPELINES: dict[str, type[StudioDiffusionPipeline]] = {"image": StudioImagePipeline, "audio": StudioMusicPipeline}


def pipeline_class(modality: str) -> type[StudioDiffusionPipeline]:
    if modality not in PIPELINES:
        raise ValueError(f"unknown modality {modality!r}; use one of {sorted(PIPELINES)}")
    return PIPELINES[modality]


def model_modality(source: str | Path) -> Modality:
    """The modality of an embedded name or a pipeline folder (``audio`` for music pipelines, else ``image``)."""
    if str(source) in EMBEDDED:
        return EMBEDDED[str(source)].modality
    data = read_index(source)
    if data is None:
        return "image"
    by_class = {cls.__name__: modality for modality, cls in PIPELINES.items()}
    return by_class.get(class_name(data), "audio" if "codec" in data else "image")  # type: ignore[return-value]


def compile_pipeline(pipe: StudioDiffusionPipeline) -> StudioDiffusionPipeline:
    """Compile ``pipe``'s UNet with ``torch.compile`` (inductor), in place; returns ``pipe``.

    The first call at each new batch shape pays the compilation (about a minute on 2 CPU cores; torch marks the
    batch dimension dynamic after the first recompile), after which sampling runs 1.3-1.5x faster here
    (docs/SPEED.md has the break-even). Worth it for long-running processes (``serve``, ``sweep``,
    ``eval --pareto``), not for a single ``generate``.
    """
    pipe.unet.compile()
    return pipe


def load_pipeline(
    model: str | Path,
    modality: Modality = "image",
    scheduler: str | None = None,
    torch_dtype: torch.dtype | None = None,
) -> StudioDiffusionPipeline:
    """Load a pipeline by embedded name (``shapes``, ``synth``), local folder, or hub id.

    Args:
        model: an embedded model name, a diffusers pipeline folder, or a hub id (offline: must be cached).
        modality: ``image`` or ``audio`` (which pipeline class reads the folder).
        scheduler: a sampler name from :data:`SCHEDULERS` to replace the saved one.
        torch_dtype: load weights in this dtype.

    Raises:
        ValueError: for an unknown embedded name, or a path/hub id that cannot be loaded (one line).
    """
    cls = pipeline_class(modality)
    source = str(model_dir(str(model)) if str(model) in EMBEDDED else model)
    kwargs: dict[str, Any] = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    try:
        pipe = cls.from_pretrained(source, **kwargs)
    except RefusedFolder:
        raise
    except (OSError, ValueError, TypeError, KeyError) as err:
        if not Path(source).exists():  # a hub id: diffusers' message is about the network and its own stack trace
            reason = "no such folder, and not in the local Hugging Face cache"
        else:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            reason = reason.split(". Please check out the root cause")[0][:200]
        raise ValueError(
            f"cannot load {modality} model {str(model)!r} ({reason}); pass an embedded name "
            f"({', '.join(sorted(EMBEDDED))}), a diffusers pipeline folder, or a cached hub id"
        ) from None
    if scheduler is not None:
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


__all__ = [
    "PIPELINES",
    "SCHEDULERS",
    "MusicPipelineOutput",
    "StudioDiffusionPipeline",
    "StudioImagePipeline",
    "StudioMusicPipeline",
    "compile_pipeline",
    "load_pipeline",
    "make_scheduler",
    "model_modality",
    "pipeline_class",
]
