"""Sample a pipeline on a world's prompts and score the samples with a judge (no files involved)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from studio.judges import load_judge
from studio.judges.metrics import grouped_diversity, prompt_adherence
from studio.models.zoo import Role
from studio.pipelines.base import StudioDiffusionPipeline
from studio.pipelines.image import to_uint8
from studio.plots import image_grid, spectrogram_grid
from studio.worlds import Prompt, World
from studio.worlds.base import to_tensor


@dataclass
class SampleResult:
    """Samples of a pipeline for a prompt list and their judge scores.

    Attributes:
        samples: per sample, an image ``(H, W, 3)`` uint8 or a waveform ``(T,)`` float32.
        prompts: the prompt of each sample.
        grid: a picture of (up to 64 of) the samples.
        adherence: fraction of samples whose judged attributes all match their prompt.
        attribute_adherence: per attribute named by the prompts.
        diversity: mean within-prompt pairwise ``1 − cos`` of judge embeddings.
        seconds_per_sample: wall time of generation divided by the number of samples.
    """

    samples: list[np.ndarray]
    prompts: list[Prompt]
    grid: np.ndarray
    adherence: float
    attribute_adherence: dict[str, float]
    diversity: float | None
    seconds_per_sample: float


def generate_batch(pipe: StudioDiffusionPipeline, texts: list[str], seeds: list[int], **kwargs) -> list[np.ndarray]:
    """One sample per (prompt, seed); each sample's noise depends only on its own seed."""
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    if pipe.__class__.__name__ == "StudioImagePipeline":
        images = pipe(prompt=texts, generator=generators, output_type="np", **kwargs).images
        return list(to_uint8(images))
    return list(pipe(prompt=texts, generator=generators, output_type="np", **kwargs).audios)


def sample_prompts(
    pipe: StudioDiffusionPipeline,
    world: World,
    prompts: list[Prompt],
    per_prompt: int = 4,
    seed: int = 0,
    batch_size: int = 32,
    judge: Role = "eval",
    **kwargs,
) -> SampleResult:
    """Generate ``per_prompt`` samples for each prompt and score them.

    Args:
        pipe: an image or music pipeline.
        world: the world whose judge scores the samples.
        prompts: prompts with the labels they ask for.
        per_prompt: samples per prompt (≥ 2 for diversity).
        seed: sample ``i`` of prompt ``p`` uses seed ``seed + 1000·p + i``.
        batch_size: samples per pipeline call.
        judge: which judge scores (``eval`` for reports); None skips scoring (scores are then NaN/None).
        **kwargs: passed to the pipeline (``guidance_scale``, ``num_inference_steps``, ...).
    """
    jobs = [(p, seed + 1000 * i + k) for i, p in enumerate(prompts) for k in range(per_prompt)]
    samples: list[np.ndarray] = []
    start = time.perf_counter()
    for b in range(0, len(jobs), batch_size):
        chunk = jobs[b : b + batch_size]
        samples += generate_batch(pipe, [p.text for p, _ in chunk], [s for _, s in chunk], **kwargs)
    seconds = (time.perf_counter() - start) / len(jobs)
    job_prompts = [p for p, _ in jobs]
    if world.modality == "image":
        grid = image_grid(samples[:64], cols=per_prompt * max(1, 8 // per_prompt))
    else:
        grid = spectrogram_grid(samples[:16], world.SAMPLE_RATE, cols=per_prompt)
    if judge is None:
        return SampleResult(
            samples=samples,
            prompts=job_prompts,
            grid=grid,
            adherence=float("nan"),
            attribute_adherence={},
            diversity=None,
            seconds_per_sample=seconds,
        )
    judged, embeddings = load_judge(world.name, judge).predict(torch.stack([to_tensor(s) for s in samples]))
    adherence = prompt_adherence(judged, [p.labels for p in job_prompts])
    diversity = grouped_diversity(embeddings, [p.text for p in job_prompts])
    return SampleResult(
        samples=samples,
        prompts=job_prompts,
        grid=grid,
        adherence=adherence.overall,
        attribute_adherence=adherence.per_attribute,
        diversity=diversity,
        seconds_per_sample=seconds,
    )
