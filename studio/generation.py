"""The one generation route: ``studio.generate`` samples a pipeline, ``write_samples`` writes what it sampled.

The CLI (``mixstudio generate``), the app, guidance sweeps, Pareto runs and the trainers' sample grids all call
:func:`generate`; arguments keep diffusers' names. It validates nothing itself: the pipeline checks its own
arguments (``ValueError``), and each boundary (CLI flags, app inputs) checks what the user typed and words the
message for its audience before anything runs.

Worked example::

    samples = studio.generate("shapes", ["a red circle"], num_per_prompt=2, guidance_scale=2, seed=0)
    samples.data[0].shape            # (32, 32, 3) uint8; seeds [0, 1]
    studio.write_samples(samples, "out/red", world="shapes")   # PNGs, grid.png, manifest.json
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from studio.guards import check_finite
from studio.guidance import default_guidance
from studio.io import atomic_dir, write_png, write_wav
from studio.manifest import Manifest, ManifestItem, write_manifest
from studio.models.zoo import EMBEDDED

Modality = Literal["image", "audio"]
#: The world whose prompts and judges go with a model that is not embedded, by modality.
DEFAULT_WORLD: dict[str, str] = {"image": "shapes", "audio": "synth"}
#: The embedded base model of each modality.
DEFAULT_MODEL: dict[str, str] = {"image": "shapes", "audio": "synth"}
#: What to change when a sampler's output is NaN or inf.
NON_FINITE_SAMPLES = "lower the guidance scale or the adapter strength, or check the model and adapter weights"
#: Pipeline calls sample this many (prompt, seed) jobs at once.
BATCH_SIZE = 16

Progress = Callable[[int, int], None]
"""``progress(done, total)`` in sampler steps summed over samples."""


@dataclass
class Samples:
    """What :func:`generate` made.

    Attributes:
        data: per sample, an image ``(H, W, 3)`` uint8 or a waveform ``(T,)`` float32 in [-1, 1].
        prompts: the prompt of each sample.
        seeds: the noise seed of each sample.
        modality: ``image`` or ``audio``.
        sample_rate: the waveforms' rate in Hz (the pipeline's own; None for images).
        settings: how they were made (model, sampler settings, adapters), as ``manifest.json`` records them.
        seconds: wall time of sampling (loading excluded).
        router_maps: with a MoA, per sample the personalised branch's router weight ``(H, W)`` in [0, 1],
            averaged over layers and sampler steps (where the subject went); None otherwise.
    """

    data: list[np.ndarray]
    prompts: list[str]
    seeds: list[int]
    modality: Modality
    sample_rate: int | None
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    router_maps: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.data)

    def __add__(self, other: Samples) -> Samples:
        """Both sets in order (e.g. two batches of one run); settings and rate of the first.

        Raises:
            ValueError: when only one of the two has router maps (samples of a MoA and of no MoA).
        """
        if (self.router_maps is None) != (other.router_maps is None):
            raise ValueError("cannot join samples with router maps (a MoA) and samples without")
        return replace(
            self,
            data=self.data + other.data,
            prompts=self.prompts + other.prompts,
            seeds=self.seeds + other.seeds,
            seconds=self.seconds + other.seconds,
            router_maps=None if self.router_maps is None else self.router_maps + other.router_maps,
        )


def seeds_for(num_prompts: int, num_per_prompt: int, seed: int = 0) -> list[int]:
    """The seed of each sample: sample ``k`` of prompt ``p`` uses ``seed + 1000·p + k``."""
    return [seed + 1000 * p + k for p in range(num_prompts) for k in range(num_per_prompt)]


def generate(
    model: Any,
    prompt: str | Sequence[str],
    *,
    modality: Modality | None = None,
    num_per_prompt: int = 1,
    negative_prompt: str | None = None,
    num_inference_steps: int = 25,
    guidance_scale: float | None = None,
    guidance_rescale: float = 0.0,
    guidance_interval: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    scheduler: str | None = None,
    audio_length_in_s: float | None = None,
    adapters: Sequence[tuple[str | Path, float]] = (),
    batch_size: int = BATCH_SIZE,
    progress: Progress | None = None,
    name: str | None = None,
    attention: str | None = None,
    base_model_id: str | None = None,
    moa: Any = None,
    subject: np.ndarray | str | Path | None = None,
    moa_strength: float = 1.0,
) -> Samples:
    """Sample ``num_per_prompt`` images or clips for each prompt.

    Args:
        model: a loaded studio pipeline, or an embedded name, pipeline folder or hub id to load.
        prompt: one prompt or a list.
        modality: ``image`` or ``audio`` when ``model`` is a name or folder (default: read from the model).
        num_per_prompt: samples per prompt.
        negative_prompt, num_inference_steps, guidance_rescale, guidance_interval, audio_length_in_s: the
            pipeline's arguments.
        guidance_scale: CFG scale (None: :func:`studio.guidance.default_guidance` of the modality).
        seed: sample ``k`` of prompt ``p`` uses ``seed + 1000·p + k`` (:func:`seeds_for`).
        seeds: explicit seeds, one per (prompt, sample) in that order, instead of ``seed``.
        scheduler: a sampler name (``studio.pipelines.SCHEDULERS``) instead of the saved one.
        adapters: ``(adapter file, strength)`` pairs applied for this call only.
        batch_size: samples per pipeline call.
        progress: ``progress(done, total)`` after every sampler step (see :func:`progress_bar`).
        name: the model's name in ``settings`` (default: the name it was loaded by, or the pipeline's path).
        base_model_id: with a pipeline passed in, refuse adapters saved for another base model (a model loaded
            here by name is checked against that name).
        attention: send the UNet's attention through this backend of ``studio.attention.BACKENDS`` (it stays
            set on a pipeline passed in); None leaves the model's processors as they are.
        moa: a mixture-of-attention model (``studio.attention.moa.MoA`` or its run folder / file) for this call;
            prompts mark the subject with ``sks`` before its class word (``"a sks shape on navy"``).
        subject: the subject's reference image (an array or an image file at the model's size) for an
            encoder-mode MoA.
        moa_strength: the personalised branch's strength (0: exactly the base model, 1: as trained).

    Returns:
        :class:`Samples`; each sample's noise depends only on its own seed, so batching changes nothing.

    Raises:
        ValueError: from the loader (a model that does not load), the adapters (one that does not fit) or the
            pipeline (arguments it refuses).
    """
    import torch

    from studio.adapters import applied_adapters
    from studio.pipelines.image import to_uint8

    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    pipe, loaded_as, swap = _open(model, modality, scheduler)
    base_model_id = loaded_as or base_model_id
    if attention is not None:
        from studio.attention import set_backend

        set_backend(pipe, attention)
    name = name or (str(model) if loaded_as else str(getattr(pipe, "name_or_path", "") or type(pipe).__name__))
    modality = "audio" if hasattr(pipe, "codec") else "image"
    guidance_scale = default_guidance(modality) if guidance_scale is None else guidance_scale
    jobs_seeds = list(seeds) if seeds is not None else seeds_for(len(prompts), num_per_prompt, seed)
    if len(jobs_seeds) != len(prompts) * num_per_prompt:
        raise ValueError(f"seeds has {len(jobs_seeds)} entries for {len(prompts)} prompts x {num_per_prompt}")
    texts = [p for p in prompts for _ in range(num_per_prompt)]
    kwargs: dict[str, Any] = {
        "negative_prompt": negative_prompt,
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "guidance_rescale": guidance_rescale,
        "guidance_interval": tuple(guidance_interval),
        "output_type": "np",
    }
    if modality == "audio" and audio_length_in_s:
        kwargs["audio_length_in_s"] = audio_length_in_s
    if progress is not None:
        kwargs["callback_on_step_end"] = _step_counter(progress, len(texts) * num_inference_steps)
    data: list[np.ndarray] = []
    start = time.perf_counter()
    with swap, applied_adapters(pipe.unet, adapters, base_model_id=base_model_id), _moa(pipe, moa) as mixture:
        sampling = None if mixture is None else _subject_sampling(mixture, pipe, texts, subject, moa_strength)
        sampled_texts = texts if sampling is None else sampling.texts  # without the identifier
        for b in range(0, len(texts), batch_size):
            generators = [torch.Generator().manual_seed(s) for s in jobs_seeds[b : b + batch_size]]
            stop = min(b + batch_size, len(texts))
            with contextlib.nullcontext() if sampling is None else sampling.batch(b, stop):
                out = pipe(prompt=sampled_texts[b:stop], generator=generators, **kwargs)
            raw = out.images if modality == "image" else out.audios
            check_finite(raw, f"sampling {texts[b]!r} (seed {jobs_seeds[b]})", NON_FINITE_SAMPLES)
            data += list(to_uint8(raw)) if modality == "image" else list(raw)
    settings = _settings(name, kwargs, scheduler, jobs_seeds[0] if jobs_seeds else seed, num_per_prompt, adapters)
    if attention is not None:
        settings["attention"] = attention
    if mixture is not None:
        settings["moa"] = str(moa) if isinstance(moa, (str, Path)) else "in memory"
        settings["moa_strength"] = float(moa_strength)
    return Samples(
        data=data,
        prompts=texts,
        seeds=jobs_seeds,
        modality=modality,
        sample_rate=pipe.sample_rate if modality == "audio" else None,
        settings=settings,
        seconds=time.perf_counter() - start,
        router_maps=sampling.maps if sampling else None,
    )


@contextlib.contextmanager
def _moa(pipe: Any, moa: Any) -> Iterator[Any]:
    """Context: the MoA (loaded and checked against ``pipe.unet`` if a path) installed on the UNet, or None."""
    if moa is None:
        yield None
        return
    from studio.attention.moa import MoA

    if hasattr(pipe, "codec"):
        raise ValueError("--moa personalises image models; this is a music model")
    mixture = moa if isinstance(moa, MoA) else MoA.load(moa, pipe.unet)
    mixture.to(device=pipe.unet.device, dtype=pipe.unet.dtype)  # a file loads as fp32 on the CPU
    with mixture.applied(pipe.unet):
        yield mixture


def _subject_sampling(mixture: Any, pipe: Any, texts: list[str], subject: Any, strength: float) -> Any:
    from studio.attention.moa import SubjectSampling
    from studio.io import read_image

    if isinstance(subject, (str, Path)):
        path, subject = subject, read_image(subject, matte=(128, 128, 128))  # the references' grey
        size = pipe.default_size
        if subject.shape[:2] != (size, size):
            raise ValueError(
                f"--subject {str(path)!r} is {subject.shape[1]}x{subject.shape[0]} px but this model draws "
                f"{size}x{size}; pass a picture of that size (the app crops and resizes any picture)"
            )
    return SubjectSampling(mixture, pipe, texts, subject, strength)


def write_samples(
    samples: Samples, out: str | Path, *, world: str, meta: dict[str, Any] | None = None, force: bool = False
) -> Path:
    """Write one file per sample, ``grid.png`` and ``manifest.json`` (what ``mixstudio eval`` reads) to ``out``;
    with MoA router maps, also ``router/NNNN.png`` (each sample with its map over it) and ``router_grid.png``.

    The folder is built in a temporary sibling and moved into place, so ``out`` is never half-written.

    Args:
        samples: what :func:`generate` returned.
        out: the folder to write.
        world: the world whose judges score the folder.
        meta: extra manifest metadata (default: ``{"source": "generate", **samples.settings}``).
        force: replace ``out`` even if it holds files mixstudio did not write.

    Returns:
        ``out`` as a Path.
    """
    from studio.plots import image_grid, spectrogram_grid

    image = samples.modality == "image"
    items = []
    with atomic_dir(out, force=force) as tmp:
        for i, (data, prompt, seed) in enumerate(zip(samples.data, samples.prompts, samples.seeds, strict=True)):
            name = f"{i:04d}.png" if image else f"{i:04d}.wav"
            write_png(tmp / name, data) if image else write_wav(tmp / name, data, samples.sample_rate)
            items.append(ManifestItem(file=name, prompt=prompt, seed=seed))
        grid = image_grid(samples.data[:64]) if image else spectrogram_grid(samples.data[:16], samples.sample_rate)
        write_png(tmp / "grid.png", grid)
        if samples.router_maps is not None:
            from studio.attention.moa import overlay

            (tmp / "router").mkdir()
            overlays = [overlay(d, m) for d, m in zip(samples.data, samples.router_maps, strict=True)]
            for i, picture in enumerate(overlays):
                write_png(tmp / "router" / f"{i:04d}.png", picture)
            write_png(tmp / "router_grid.png", image_grid(overlays[:64]))
        meta = {"source": "generate", **samples.settings} if meta is None else meta
        write_manifest(tmp, Manifest(world=world, modality=samples.modality, items=items, meta=meta))
    return Path(out)


def model_world(model: str, modality: str) -> str:
    """The world whose prompts and judges go with ``model``: an embedded model's own, else the modality's."""
    return EMBEDDED[model].world if model in EMBEDDED else DEFAULT_WORLD[modality]


def eval_prompt_texts(world_name: str) -> list[str]:
    """The held-out evaluation prompts of a world (``--prompt-set eval``)."""
    from studio.worlds import get_world

    return [p.text for p in get_world(world_name).eval_prompts()]


def _open(model: Any, modality: Modality | None, scheduler: str | None) -> tuple[Any, str | None, Any]:
    """``(pipeline, base model id, scheduler context)`` for a name/folder (loaded) or a caller's pipeline.

    A loaded model's name is the base model id adapters must have been saved for; a caller's pipeline (the app's
    cache) comes with adapters the caller has vouched for, and samples with ``scheduler`` only inside the context.
    """
    from studio.pipelines import load_pipeline, model_modality

    if isinstance(model, (str, Path)):
        name = str(model)
        return (
            load_pipeline(name, modality or model_modality(name), scheduler=scheduler),
            name,
            contextlib.nullcontext(),
        )
    return model, None, _scheduler_swapped(model, scheduler)


def _step_counter(progress: Progress, total: int) -> Callable:
    """A pipeline step callback that reports sampler steps done (summed over the batch) of ``total``."""
    done = [0]

    def tick(pipe, step, t, tensors):
        done[0] += len(tensors["latents"])
        progress(done[0], total)
        return tensors

    return tick


def _settings(
    name: str, kwargs: dict[str, Any], scheduler: str | None, seed: int, n: int, adapters: Sequence
) -> dict[str, Any]:
    """How samples were made, under the keys ``manifest.json`` has always used."""
    return {
        "model": name,
        "steps": kwargs["num_inference_steps"],
        "guidance": float(kwargs["guidance_scale"]),
        "guidance_rescale": float(kwargs["guidance_rescale"]),
        "guidance_interval": [float(x) for x in kwargs["guidance_interval"]],
        "negative_prompt": kwargs["negative_prompt"],
        "scheduler": scheduler or "saved",
        "seed": seed,
        "n": n,
        "audio_length_in_s": kwargs.get("audio_length_in_s"),
        "adapter": str(adapters[0][0]) if len(adapters) == 1 else [str(a) for a, _ in adapters] or None,
        "adapter_scale": float(adapters[0][1]) if len(adapters) == 1 else [float(s) for _, s in adapters] or 1.0,
    }


@contextlib.contextmanager
def progress_bar(desc: str, enabled: bool = True) -> Iterator[Progress | None]:
    """Context: a tqdm bar of sampler steps as a :data:`Progress` callback for :func:`generate` (None if hidden)."""
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm

    with tqdm(desc=desc, unit="step") as bar:

        def update(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        yield update


@contextlib.contextmanager
def _scheduler_swapped(pipe: Any, scheduler: str | None) -> Iterator[None]:
    """Context: ``pipe`` samples with the named scheduler (same noise schedule), its own again on exit."""
    if scheduler is None:
        yield
        return
    from studio.pipelines import make_scheduler

    saved = pipe.scheduler
    pipe.scheduler = make_scheduler(scheduler, saved.config)
    try:
        yield
    finally:
        pipe.scheduler = saved
