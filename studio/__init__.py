"""mixstudio: a finetuning studio for generative diffusion and music models.

The public API. Names resolve lazily (``import studio`` stays fast for the CLI); each
maps to exactly one module in ``_API``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API: dict[str, str] = {
    # worlds
    "WORLDS": "studio.worlds",
    "World": "studio.worlds",
    "Sample": "studio.worlds",
    "Prompt": "studio.worlds",
    "get_world": "studio.worlds",
    # judges and metrics
    "Judge": "studio.judges",
    "load_judge": "studio.judges",
    "prompt_adherence": "studio.judges",
    "pairwise_diversity": "studio.judges",
    "grouped_diversity": "studio.judges",
    "frechet_distance": "studio.judges",
    "sdr": "studio.judges",
    "si_sdr": "studio.judges",
    # generation: the one route every caller takes
    "generate": "studio.generation",
    "write_samples": "studio.generation",
    "Samples": "studio.generation",
    "model_world": "studio.generation",
    "load_pipeline": "studio.pipelines",
    "compile_pipeline": "studio.pipelines",
    "model_modality": "studio.pipelines",
    "SCHEDULERS": "studio.pipelines",
    "StudioDiffusionPipeline": "studio.pipelines",
    "default_guidance": "studio.guidance",
    "EMBEDDED": "studio.models.zoo",
    "model_dir": "studio.models.zoo",
    "slider_pairs": "studio.models.zoo",
    # evaluation: the one scoring route
    "score_samples": "studio.evaluation",
    "evaluate_folder": "studio.evaluation",
    "EvalReport": "studio.evaluation",
    "guidance_sweep": "studio.evaluation",
    "pareto_eval": "studio.evaluation",
    "SweepReport": "studio.evaluation",
    "spectrogram_image": "studio.plots",
    # recipes and configs
    "RECIPES": "studio.recipes",
    "get_recipe": "studio.recipes",
    "run_config": "studio.recipes",
    "apply_overrides": "studio.config",
    # source separation
    "SEPARATORS": "studio.separation",
    "Separator": "studio.separation",
    "open_separator": "studio.separation",
    "separate": "studio.separation",
    "separate_file": "studio.separation.files",
    "stem_plan": "studio.separation.files",
    "write_separation_manifest": "studio.separation.files",
    "read_audio_info": "studio.separation.files",
    "separation_scores": "studio.evaluation.separation",
    "EMBEDDED_SEPARATORS": "studio.models.zoo",
    # multi-source diffusion: one model that generates, accompanies and separates stems
    "MultiSourceDiffusion": "studio.separation",
    "SeparationOptions": "studio.separation",
    "generate_stems": "studio.pipelines.stems",
    "write_stems": "studio.pipelines.stems",
    # adapters
    "add_adapter": "studio.adapters",
    "load_adapter": "studio.adapters",
    "save_adapter": "studio.adapters",
    "set_adapter_scale": "studio.adapters",
    "merge_adapters": "studio.adapters",
    "unmerge_adapters": "studio.adapters",
    "applied_adapters": "studio.adapters",
    "read_adapter_header": "studio.adapters",
    "export_adapter": "studio.adapters",
    "import_adapter": "studio.adapters",
    # merging
    "merge_state_dicts": "studio.merging",
    "merge_pipelines": "studio.merging",
    "interpolate": "studio.merging",
    "LiveMerge": "studio.merging",
    "adapted_pipeline": "studio.merging",
    # files written whole or not at all
    "atomic_dir": "studio.io",
    "atomic_write_text": "studio.io",
    "check_work_dir": "studio.io",
    "write_wav": "studio.io",
    # the web app (gradio is imported only by build_ui)
    "Studio": "studio.app.service",
    "build_ui": "studio.app.ui",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'studio' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
