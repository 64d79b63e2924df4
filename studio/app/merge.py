"""The app's merge actions: live weight-space merges with a fixed-seed preview, the quality↔diversity slider, and
saving a merge as a model. :class:`MergeActions` is a part of :class:`~studio.app.service.Studio`.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import studio
from studio.app.inputs import MAX_MERGE, Progress, check_adapter_scale, check_prompt, check_sampling, steps_reporter
from studio.app.models import AdapterInfo, ModelCatalog, ModelInfo

logger = logging.getLogger(__name__)


@dataclass
class MergePreview:
    """One sample of the live merge: ``image`` (for music, the clip's spectrogram) and ``audio`` for music.

    ``models`` are the merged models, or adapters of the model ``base`` (then ``weights`` are strengths).
    """

    image: np.ndarray
    audio: np.ndarray | None
    sample_rate: int | None
    models: list[str]
    weights: list[float]
    base: str | None = None


class MergeActions:
    """Merging in the app, a part of :class:`~studio.app.service.Studio`.

    Uses the service's model catalog, lock and live-merge cache (below), and its ``list_models``,
    ``list_adapters``, ``resolve`` and ``_new_run_folder``.
    """

    models: ModelCatalog
    _lock: threading.RLock
    _live: studio.LiveMerge | None
    _live_key: tuple | None

    def merge_preview(
        self,
        models: list[str],
        weights: list[float],
        *,
        prompt: str,
        seed: int = 0,
        steps: int = 25,
        guidance: float = studio.default_guidance("image"),
        normalize: bool = True,
        progress: Progress | None = None,
    ) -> MergePreview:
        """Merge the UNets of ``models`` with ``weights`` in memory and sample one fixed-seed preview.

        The sources are loaded once per set of models; moving a weight only re-merges (no disk I/O). Listed
        adapters of one base model merge too: each is applied at its weight as strength (see
        ``studio.merging``: additive adapters sum exactly, orthogonal ones stay rotations).

        Args:
            models: two to ``MAX_MERGE`` listed models of one architecture, or listed adapters of one model (of one
                method, or of several: each applies in turn at its strength).
            weights: one per model; with ``normalize`` they are divided by their sum (the preview reports the
                weights used), else used as given (an affine combination, see ``studio.merging``).
            prompt, seed, steps, guidance: the preview's sampling settings.
            progress: called with ``(fraction, description)`` while merging and at every sampler step.

        Raises:
            ValueError: for fewer than two or repeated models, bad weights, mismatched architectures, models
                mixed with adapters, adapters of different models, or sampling settings out of range.
        """
        check_prompt(prompt)
        check_sampling(steps, guidance, seed)
        sampling = {"num_inference_steps": steps, "guidance_scale": float(guidance), "seed": seed}
        sampling["progress"] = steps_reporter(progress, f"sampling the preview ({steps} steps)")
        if progress is not None:
            progress(0.0, "loading and merging")
        with self._lock:
            adapters = self._merged_adapters(models, weights, normalize)
            if adapters is not None:
                base, pairs = adapters
                pipe = self.models.pipeline(base)
                sample = studio.generate(pipe, prompt, adapters=pairs, **sampling).data[0]
                used = [w for _, w in pairs]
            else:
                base, live, used = None, *self._live_merge(models, weights, normalize)
                pipe = live.set_weights(used)
                sample = studio.generate(pipe, prompt, **sampling).data[0]
        merged = {"models": list(models), "weights": used, "base": base}
        if sample.ndim == 3:
            return MergePreview(image=sample, audio=None, sample_rate=None, **merged)
        rate = pipe.sample_rate
        return MergePreview(image=studio.spectrogram_image(sample, rate), audio=sample, sample_rate=rate, **merged)

    def quality_diversity_pairs(self) -> dict[str, tuple[str, str]]:
        """World → (quality student, diversity student): the shipped pairs behind the quality↔diversity slider."""
        shipped = {m.name for m in self.list_models() if m.kind == "embedded"}
        return {world: pair for world, pair in studio.slider_pairs().items() if set(pair) <= shipped}

    def quality_diversity_preview(
        self,
        world: str,
        diversity: float,
        *,
        prompt: str,
        seed: int = 0,
        steps: int = 25,
        progress: Progress | None = None,
    ) -> MergePreview:
        """Sample ``(1 − λ)·quality + λ·diversity`` of ``world``'s CFG-distilled students, unguided.

        The students learnt to sample without guidance (one UNet call per step), so the preview uses none.

        Raises:
            ValueError: for a world without both students, λ outside [0, 1], or bad sampling settings.
        """
        pairs = self.quality_diversity_pairs()
        if world not in pairs:
            raise ValueError(f"world {world!r} ships no quality/diversity students; pick one of {sorted(pairs)}")
        if not (isinstance(diversity, (int, float)) and 0 <= diversity <= 1):
            raise ValueError(f"the diversity weight λ must be between 0 and 1, got {diversity}")
        return self.merge_preview(
            list(pairs[world]),
            [1 - diversity, diversity],
            prompt=prompt,
            seed=seed,
            steps=steps,
            guidance=1.0,
            normalize=False,
            progress=progress,
        )

    def save_merge(
        self,
        models: list[str],
        weights: list[float],
        name: str,
        *,
        normalize: bool = True,
        progress: Progress | None = None,
    ) -> ModelInfo:
        """Save the merge of ``models`` with ``weights`` as the pipeline ``runs/<name>`` (atomically).

        ``progress`` is called with ``(fraction, description)`` as it merges and as it writes.

        Raises:
            ValueError: for a bad or taken name, and everything :meth:`merge_preview` refuses.
        """
        out = self._new_run_folder(name)
        report = progress or (lambda fraction, desc: None)
        with self._lock:
            report(0.0, "loading and merging")
            adapters = self._merged_adapters(models, weights, normalize)
            if adapters is not None:
                base, pairs = adapters
                pipe = studio.adapted_pipeline(self.models.pipeline(base), pairs)
                used = [w for _, w in pairs]
                report(0.5, f"writing runs/{name}")
                record = {"base": base, "adapters": list(models), "strengths": used, "rule": "adapters baked in"}
                with studio.atomic_dir(out) as tmp:
                    pipe.save_pretrained(tmp)
                    studio.atomic_write_text(tmp / "merge.json", json.dumps(record, indent=2) + "\n")
            else:
                live, used = self._live_merge(models, weights, normalize)
                live.set_weights(used)
                report(0.5, f"writing runs/{name}")
                live.save(out)
        logger.info("saved merge of %s with weights %s to %s", models, used, out)
        return self.resolve(f"runs/{name}")

    def _adapter_of(self, adapter: str, model: str) -> AdapterInfo:
        """The listed adapter ``adapter``, refused unless it was trained on ``model``."""
        info = self.models.resolve_adapter(adapter)
        if info.base != model:
            raise ValueError(f"adapter {adapter!r} was trained on {info.base!r}, not {model!r}; pick that model")
        return info

    def _merged_adapters(
        self, items: list[str], weights: list[float], normalize: bool
    ) -> tuple[str, list[tuple[Path, float]]] | None:
        """``(base model, [(file, strength)])`` when ``items`` are adapters; None when they are models."""
        adapters = {a.name: a for a in self.list_adapters()}
        picked = [adapters.get(item) for item in items]
        if all(a is None for a in picked):
            return None
        used = merge_weights(items, weights, normalize)
        if any(a is None for a in picked):
            model = items[picked.index(None)]
            raise ValueError(
                f"{model!r} is a model and the other picks are adapters; merge models with models, or adapters "
                "of one model with each other"
            )
        bases = sorted({a.base for a in picked})
        if len(bases) > 1:
            raise ValueError(f"the adapters belong to different models {bases}; pick adapters of one model")
        for w in used:
            check_adapter_scale(w)
        return bases[0], [(a.path, w) for a, w in zip(picked, used, strict=True)]

    def _live_merge(
        self, models: list[str], weights: list[float], normalize: bool
    ) -> tuple[studio.LiveMerge, list[float]]:
        used = merge_weights(models, weights, normalize)
        infos = [self.resolve(m) for m in models]
        odd = next((i for i in infos if i.modality != infos[0].modality), None)
        if odd is not None:
            first = infos[0]
            raise ValueError(f"cannot merge {first.name!r} ({first.modality}) with {odd.name!r} ({odd.modality})")
        key = tuple((i.source, self.models.version(i)) for i in infos)
        if key != self._live_key:
            self._live = studio.LiveMerge([self.models.pipeline(m) for m in models], [i.name for i in infos])
            self._live_key = key
        return self._live, used


def merge_weights(items: list[str], weights: list[float], normalize: bool) -> list[float]:
    """Checked merge weights of 2 to ``MAX_MERGE`` distinct items, divided by their sum when ``normalize``."""
    if not 2 <= len(items) <= MAX_MERGE:
        raise ValueError(f"pick 2 to {MAX_MERGE} models to merge, got {len(items)}")
    repeated = sorted({m for m in items if items.count(m) > 1})
    if repeated:
        raise ValueError(f"model {repeated[0]!r} is picked twice; pick different models")
    if len(weights) != len(items) or not all(isinstance(w, (int, float)) and math.isfinite(w) for w in weights):
        raise ValueError(f"give one finite weight per model, got {list(weights)} for {len(items)} models")
    used = [float(w) for w in weights]
    if normalize:
        total = sum(used)
        if total <= 0:
            raise ValueError(f"weights {used} sum to {total:g}; raise at least one weight above 0")
        used = [w / total for w in used]
    return used
