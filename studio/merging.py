"""Weight-space merging of whole models (affine combinations of same-architecture UNets) and of adapters.

``merge_state_dicts`` computes ``θ = Σ_i w_i θ_i`` key by key (Wortsman et al. 2022, "Model soups",
Eq. 1 with free weights); ``merge_pipelines`` and ``interpolate`` apply it to the UNets of saved
pipelines; :class:`LiveMerge` keeps the sources in memory so that an app slider re-merges in
milliseconds without touching the disk.

Worked example: ``interpolate("runs/a", "runs/b", alpha=0.25)`` returns a pipeline whose UNet holds
``0.75·θ_a + 0.25·θ_b``; every other component (scheduler, VAE, codec, text encoder) is the first
source's, and their configs must match across sources.

Adapters of one base model merge by strength: ``studio.adapters.applied_adapters`` puts them on a UNet together,
adapter ``i`` at strength ``w_i``. Additive adapters (LoRA, DiffuseKronA, LoKr) then give exactly
``W + Σ w_i ΔW_i``, the weight-space combination of the adapted models when ``Σ w_i = 1``; orthogonal
ones compose as ``W·R_1(w_1)ᵀ·R_2(w_2)ᵀ⋯``, each ``R_i(w)`` a rotation (or reflection) for every ``w``,
so the merge stays on the group instead of averaging rotations into a non-orthogonal matrix.
:func:`adapted_pipeline` bakes such a merge into a UNet that saves like any model.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from studio.io import atomic_dir, atomic_write_text, check_output_dir
from studio.pipelines import Modality, StudioDiffusionPipeline, load_pipeline, model_modality

#: Components besides the UNet whose configs must agree for a merge to mean anything.
_SHARED_COMPONENTS = ("vae", "codec")


def merge_state_dicts(state_dicts: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict:
    """The affine combination ``Σ_i weights[i] · state_dicts[i]`` of same-architecture weights.

    Weights are used as given, never normalised: with ``sum(weights) == 1`` the result is a point on the
    line (plane) through the sources, a convex mix when all weights are also ≥ 0; another sum scales the
    model (``[2, -1]`` extrapolates past the first source, task-arithmetic style). Floating tensors are
    accumulated in float32 (float64 stays float64) and cast back to their dtype; non-floating tensors
    (integer buffers) must be equal in every source and are copied from the first.

    Args:
        state_dicts: two or more mappings with the same keys, shapes and dtypes (a single one is allowed:
            it is scaled by its weight).
        weights: one finite weight per state dict.

    Returns:
        A new state dict; the inputs are not modified.

    Raises:
        ValueError: for no state dicts, a weight count that differs from the state dict count, a non-finite
            weight, different keys, shapes or dtypes, unequal non-floating tensors, or a non-finite result.

    Example:
        >>> a, b = {"w": torch.tensor([0.0, 2.0])}, {"w": torch.tensor([4.0, 6.0])}
        >>> merge_state_dicts([a, b], [0.75, 0.25])["w"]
        tensor([1., 3.])
    """
    if not state_dicts:
        raise ValueError("merge_state_dicts needs at least one state dict, got an empty list")
    check_weights(weights, len(state_dicts))
    first = state_dicts[0]
    for i, sd in enumerate(state_dicts[1:], start=1):
        _check_same_layout(first, sd, i)
    merged = {}
    for key, ref in first.items():
        if not ref.is_floating_point():
            unequal = [i for i, sd in enumerate(state_dicts) if not torch.equal(sd[key], ref)]
            if unequal:
                raise ValueError(f"non-floating tensor {key!r} differs between model 0 and model {unequal[0]}")
            merged[key] = ref.clone()
            continue
        acc_dtype = torch.float64 if ref.dtype == torch.float64 else torch.float32
        acc = torch.zeros(ref.shape, dtype=acc_dtype, device=ref.device)
        for w, sd in zip(weights, state_dicts, strict=True):
            acc.add_(sd[key].to(acc_dtype), alpha=float(w))
        if not torch.isfinite(acc).all():
            raise ValueError(f"merged tensor {key!r} is not finite (weights {list(weights)}); use smaller weights")
        merged[key] = acc.to(ref.dtype)
    return merged


#: Merge weights (and adapter strengths) beyond this only push weights out of the range the model was trained in.
MAX_WEIGHT = 10.0


def check_weights(weights: Sequence[float], count: int) -> None:
    """Refuse a weight list that does not hold ``count`` finite numbers.

    Raises:
        ValueError: naming the weights received and what is expected.
    """
    if len(weights) != count:
        raise ValueError(f"got {len(weights)} weights for {count} models; give one weight per model")
    if any(isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) for w in weights):
        raise ValueError(f"merge weights must be finite numbers, got {list(weights)}")
    if any(abs(w) > MAX_WEIGHT for w in weights):
        raise ValueError(
            f"merge weights must be between -{MAX_WEIGHT:g} and {MAX_WEIGHT:g}, got {list(weights)}; a weight that "
            "large only scales the model out of its range"
        )


def _check_same_layout(ref: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor], index: int) -> None:
    missing, extra = sorted(set(ref) - set(other)), sorted(set(other) - set(ref))
    if missing or extra:
        raise ValueError(
            f"model {index} has different weights than model 0 (missing {missing[:3]}, extra {extra[:3]}); "
            "merge only models of one architecture"
        )
    for key, tensor in ref.items():
        if other[key].shape != tensor.shape or other[key].dtype != tensor.dtype:
            raise ValueError(
                f"weight {key!r} is {tuple(other[key].shape)} {other[key].dtype} in model {index} but "
                f"{tuple(tensor.shape)} {tensor.dtype} in model 0; merge only models of one architecture"
            )


def check_mergeable(pipelines: Sequence[StudioDiffusionPipeline], names: Sequence[str]) -> None:
    """Refuse pipelines whose UNets (or shared components) differ in architecture.

    Raises:
        ValueError: one line naming the first source and the one that differs, and what differs.
    """
    if len(pipelines) != len(names):
        raise ValueError(f"got {len(names)} names for {len(pipelines)} pipelines")
    ref, ref_name = pipelines[0], names[0]
    for pipe, name in zip(pipelines[1:], names[1:], strict=True):
        where = f"cannot merge {ref_name!r} and {name!r}"
        if type(pipe) is not type(ref):
            raise ValueError(f"{where}: {type(ref).__name__} vs {type(pipe).__name__}; merge models of one modality")
        diff = _config_diff(ref.unet.config, pipe.unet.config)
        if diff:
            raise ValueError(f"{where}: their UNet configs differ in {diff}; merge only models of one architecture")
        try:
            _check_same_layout(ref.unet.state_dict(), pipe.unet.state_dict(), 1)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        for component in _SHARED_COMPONENTS:
            a, b = getattr(ref, component, None), getattr(pipe, component, None)
            if (a is None) != (b is None) or (a is not None and _config_diff(a.config, b.config)):
                raise ValueError(f"{where}: their {component} components differ; the merge would decode wrongly")
        ref_te, te = ref.config.get("text_encoder_package"), pipe.config.get("text_encoder_package")
        if ref_te != te:
            raise ValueError(f"{where}: text encoders differ ({ref_te!r} vs {te!r})")


def _config_diff(a: Mapping, b: Mapping) -> list[str]:
    keys = {k for k in (*a.keys(), *b.keys()) if not k.startswith("_")}
    return sorted(k for k in keys if _plain(a.get(k)) != _plain(b.get(k)))


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def merge_pipelines(
    sources: Sequence[str | Path],
    weights: Sequence[float],
    out: str | Path | None = None,
    *,
    modality: Modality | None = None,
    force: bool = False,
) -> StudioDiffusionPipeline:
    """Load pipelines and return one whose UNet is the affine combination of theirs.

    Args:
        sources: embedded names, pipeline folders or cached hub ids (two or more).
        weights: one finite weight per source, used as given (see :func:`merge_state_dicts`).
        out: if given, save the merged pipeline here (written atomically) with ``merge.json``.
        modality: ``image`` or ``audio`` (default: read from the first source).
        force: replace ``out`` even if it holds files mixstudio did not write.

    Returns:
        The first source's pipeline holding the merged UNet weights.

    Raises:
        ValueError: for fewer than two sources, bad weights, an unloadable source, mismatched
            architectures (naming both sources), or an unwritable ``out`` (checked before loading).
    """
    if len(sources) < 2:
        raise ValueError(f"give at least two models to merge, got {len(sources)}")
    check_weights(weights, len(sources))
    if out is not None:
        check_output_dir(out, force=force)
    names = [str(s) for s in sources]
    if modality is None:
        modalities = [model_modality(s) for s in sources]
        odd = next((i for i, m in enumerate(modalities) if m != modalities[0]), None)
        if odd is not None:
            raise ValueError(
                f"cannot merge {names[0]!r} and {names[odd]!r}: {modalities[0]} vs {modalities[odd]} models"
            )
        modality = modalities[0]
    live = LiveMerge([load_pipeline(s, modality) for s in sources], names)
    live.set_weights(weights)
    if out is not None:
        live.save(out, force=force)
    return live.pipeline


def merge_adapter_files(
    base: str | Path,
    adapters: Sequence[str | Path],
    strengths: Sequence[float],
    out: str | Path | None = None,
    *,
    modality: Modality | None = None,
    force: bool = False,
) -> StudioDiffusionPipeline:
    """Load ``base`` and return a copy whose UNet holds the adapter files merged in, file ``i`` at ``strengths[i]``.

    Additive adapters combine exactly (``W + Σ s_i ΔW_i``), orthogonal ones compose and stay rotations (see the
    module docstring); the result is a plain pipeline that saves and loads like any model.

    Args:
        base: the model the adapters were trained on (embedded name, pipeline folder or cached hub id).
        adapters: one or more files written by ``save_adapter`` (``mixstudio train finetune``).
        strengths: one finite strength per file.
        out: if given, save the pipeline here (written atomically) with ``merge.json``.
        modality: ``image`` or ``audio`` (default: read from ``base``).
        force: replace ``out`` even if it holds files mixstudio did not write.

    Raises:
        ValueError: for no adapters, bad strengths, an adapter whose header names another base model, one that
            does not fit the UNet, or an unwritable ``out`` (checked before loading).
    """
    if not adapters:
        raise ValueError("give at least one adapter file to merge into the base model")
    check_weights(strengths, len(adapters))
    if out is not None:
        check_output_dir(out, force=force)
    pipe = load_pipeline(base, modality or model_modality(base))
    pipe = adapted_pipeline(pipe, list(zip(adapters, strengths, strict=True)), base_model_id=str(base))
    if out is not None:
        record = {
            "base": str(base), "adapters": [str(a) for a in adapters], "strengths": [float(s) for s in strengths],
            "rule": "adapter i applied at strength i, merged into the UNet",
        }  # fmt: skip
        with atomic_dir(out, force=force) as tmp:
            pipe.save_pretrained(tmp)
            atomic_write_text(tmp / "merge.json", json.dumps(record, indent=2) + "\n")
    return pipe


def interpolate(
    a: str | Path, b: str | Path, alpha: float, out: str | Path | None = None, *, modality: Modality | None = None
) -> StudioDiffusionPipeline:
    """``(1 − alpha)·a + alpha·b``: ``alpha = 0`` gives ``a``, ``1`` gives ``b`` (see :func:`merge_pipelines`).

    Raises:
        ValueError: for a non-finite ``alpha``, and everything :func:`merge_pipelines` refuses.
    """
    if not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number (0 = first model, 1 = second), got {alpha!r}")
    return merge_pipelines([a, b], [1.0 - alpha, float(alpha)], out, modality=modality)


class LiveMerge:
    """Source UNet weights kept in memory and re-merged into one live pipeline on demand.

    Built once per set of sources (loading is the slow part); :meth:`set_weights` then costs one pass
    over the weights and no disk I/O, so a UI slider can re-merge on every release.

    Args:
        pipelines: loaded pipelines of one architecture (see :func:`check_mergeable`); they are not modified.
        names: a name per pipeline, used in error messages and ``merge.json``.

    Attributes:
        pipeline: the live pipeline (its own UNet copy; other components shared with ``pipelines[0]``).
        weights: the weights last merged, or None before the first :meth:`set_weights`.
    """

    def __init__(self, pipelines: Sequence[StudioDiffusionPipeline], names: Sequence[str]):
        if len(pipelines) < 2:
            raise ValueError(f"give at least two models to merge, got {len(pipelines)}")
        check_mergeable(pipelines, names)
        self.names = list(names)
        self.states = [{k: v.detach().clone() for k, v in p.unet.state_dict().items()} for p in pipelines]
        self.pipeline = _fresh_pipeline(pipelines[0])
        self.weights: list[float] | None = None

    def set_weights(self, weights: Sequence[float]) -> StudioDiffusionPipeline:
        """Merge the sources with ``weights`` into :attr:`pipeline` (no-op when unchanged) and return it."""
        weights = [float(w) for w in weights]
        if weights != self.weights:
            merged = merge_state_dicts(self.states, weights)
            self.pipeline.unet.load_state_dict(merged)
            self.weights = weights
        return self.pipeline

    def save(self, out: str | Path, force: bool = False) -> Path:
        """Write the live pipeline to ``out`` atomically, with ``merge.json`` naming sources and weights."""
        if self.weights is None:
            raise ValueError("call set_weights before save: no merge has been computed yet")
        out = Path(out)
        with atomic_dir(out, force=force) as tmp:
            self.pipeline.save_pretrained(tmp)
            record = {"sources": self.names, "weights": self.weights, "rule": "sum_i weights[i] * unet_i"}
            atomic_write_text(tmp / "merge.json", json.dumps(record, indent=2) + "\n")
        return out


def adapted_pipeline(
    pipeline: StudioDiffusionPipeline,
    adapters: Sequence[tuple[str | Path, float]],
    *,
    base_model_id: str | None = None,
) -> StudioDiffusionPipeline:
    """A copy of ``pipeline`` whose UNet holds the adapters (at their strengths) merged into plain weights.

    ``pipeline`` is not modified; the copy saves with ``save_pretrained`` like any model. With ``base_model_id``,
    an adapter saved for another base model is refused (``load_adapter``'s check).
    """
    from studio.adapters import bake_adapters, load_adapters

    pipe = _fresh_pipeline(pipeline)
    load_adapters(pipe.unet, adapters, base_model_id=base_model_id)
    bake_adapters(pipe.unet)
    return pipe


def _fresh_pipeline(template: StudioDiffusionPipeline) -> StudioDiffusionPipeline:
    """A pipeline like ``template`` with its own UNet and scheduler, sharing the frozen components."""
    components = dict(template.components)
    components["unet"] = copy.deepcopy(template.unet)
    components["scheduler"] = type(template.scheduler).from_config(template.scheduler.config)
    package = template.config.get("text_encoder_package")
    if package is not None:  # the packaged encoder is reattached (cached) and stays out of save_pretrained
        components.update(text_encoder=None, tokenizer=None, text_encoder_package=package)
    pipe = type(template)(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe
