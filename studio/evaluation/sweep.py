"""Guidance sweeps: sample a model on its world's held-out prompts at several guidance scales, judge each.

Every point is a folder that ``mixstudio eval`` would score the same way (files, ``grid.png``,
``manifest.json``, ``eval.json``), so the table can be re-checked file by file. The sweep writes
``sweep.json``, ``sweep.md`` (a Markdown table) and ``sweep.png`` (adherence against diversity).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.evaluation.folder import write_report
from studio.evaluation.scoring import EvalReport, finite_or_nan, score_samples
from studio.generation import Samples, eval_prompt_texts, generate, model_world, progress_bar, write_samples
from studio.guidance import Guidance
from studio.io import as_written, atomic_dir, atomic_write_text, check_output_dir, write_png
from studio.models.zoo import Role
from studio.plots import tradeoff_plot


@dataclass
class SweepPoint:
    """One guidance scale's scores (eval-judge adherence, diversity, Fréchet) and sampling wall time."""

    guidance: float
    adherence: float
    attribute_adherence: dict[str, float]
    diversity: float | None
    frechet: float | None
    seconds_per_sample: float
    folder: str


@dataclass
class SweepReport:
    model: str
    world: str
    judge: str
    steps: int
    per_prompt: int
    prompts: int
    points: list[SweepPoint]
    guidance_rescale: float = 0.0
    guidance_interval: tuple[float, float] = (0.0, 1.0)

    def table(self) -> str:
        """A Markdown table: one row per guidance scale."""
        attrs = list(self.points[0].attribute_adherence) if self.points else []
        head = ["guidance", "adherence", *attrs, "diversity", "Fréchet", "s/sample"]
        rows = [
            f"| {p.guidance:g} | {p.adherence:.3f} | "
            + "".join(f"{p.attribute_adherence.get(a, math.nan):.3f} | " for a in attrs)
            + ("n/a" if p.diversity is None else f"{p.diversity:.4f}")
            + f" | {finite_or_nan(p.frechet):.2f} | {p.seconds_per_sample:.3f} |"
            for p in self.points
        ]
        title = (
            f"model `{self.model}` · world {self.world} · {self.judge} judge · {self.prompts} held-out prompts "
            f"× {self.per_prompt} · {self.steps} steps"
        )
        refined = Guidance(rescale=self.guidance_rescale, interval=self.guidance_interval)  # the scale varies by row
        title += "".join(f" · {words}" for words in refined.refinements())
        return "\n".join([title, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head), *rows])

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


def check_per_prompt(per_prompt: int) -> None:
    """Raise ValueError unless there are at least two samples per prompt (diversity compares pairs)."""
    if per_prompt < 2:
        raise ValueError(f"-n must be at least 2 for diversity to be defined, got {per_prompt}")


def sample_and_score(
    pipe: Any,
    prompts: Sequence[str],
    out: Path,
    *,
    world: str,
    roles: Sequence[Role] = ("eval",),
    progress: bool = False,
    **sampling: Any,
) -> tuple[dict[str, EvalReport], Samples]:
    """Sample ``prompts`` with ``pipe``, write the folder ``out`` and score what was written with each judge role.

    The first role's report goes to ``out/eval.json`` (what ``mixstudio eval`` writes), others to
    ``out/eval-<role>.json``; the scores equal ``mixstudio eval``'s on the folder (audio is judged as written).

    Args:
        sampling: :func:`studio.generate` arguments (``num_per_prompt``, ``guidance_scale``, ``seed``, ...).
    """
    with progress_bar(out.name, progress) as bar:
        samples = generate(pipe, prompts, progress=bar, **sampling)
    write_samples(samples, out, world=world)
    data = samples.data if samples.modality == "image" else [as_written(a) for a in samples.data]
    reports = {role: score_samples(data, samples.prompts, world, role=role) for role in roles}
    for i, role in enumerate(roles):
        write_report(reports[role], out / ("eval.json" if i == 0 else f"eval-{role}.json"))
    return reports, samples


def guidance_sweep(
    model: str,
    modality: str,
    scales: list[float],
    *,
    out: str | Path,
    per_prompt: int = 4,
    steps: int = 25,
    seed: int = 0,
    scheduler: str | None = None,
    guidance_rescale: float = 0.0,
    guidance_interval: tuple[float, float] = (0.0, 1.0),
    world: str | None = None,
    judge: Role = "eval",
    progress: bool = True,
    compile: bool = False,
    force: bool = False,
    attention: str | None = None,
) -> SweepReport:
    """Sample ``model`` on its world's held-out prompts at each guidance scale and score every folder.

    Args:
        model: embedded name, pipeline folder or hub id.
        modality: ``image`` or ``audio``.
        scales: guidance scales (1 = no classifier-free guidance, half the UNet calls).
        out: folder that receives ``guidance-<w>/`` sample folders and the sweep report (written atomically:
            an existing folder is replaced only once the whole sweep has succeeded).
        per_prompt: samples per prompt (≥ 2 so diversity is defined).
        steps, seed, scheduler, guidance_rescale, guidance_interval: sampler settings, the same at every scale.
        world: the world whose prompts and judges are used (default: the model's).
        judge: ``eval`` for reported numbers; ``reward`` to compare with what trainers optimise.
        progress: show progress bars.
        force: replace ``out`` even if it holds files mixstudio did not write.
        attention: the UNet's attention backend (``studio.attention.BACKENDS``; None: the model's own).
        compile: compile the UNet first (pays off over many points; see ``studio.pipelines.compile_pipeline``).

    Raises:
        ValueError: for no scales, a duplicate or invalid scale, ``per_prompt < 2`` or an unwritable ``out``.
    """
    if not scales:
        raise ValueError("give at least one guidance scale, e.g. --guidance 1 2 4 6")
    if len(set(scales)) != len(scales):
        raise ValueError(f"guidance scales must be distinct, got {scales}")
    check_per_prompt(per_prompt)
    for w in scales:  # every setting is checked before any sampling starts
        Guidance(w, guidance_rescale, guidance_interval)
    out = check_output_dir(out, force=force)
    from studio.pipelines import compile_pipeline, load_pipeline

    pipe = load_pipeline(model, modality)
    if attention is not None:
        from studio.attention import set_backend

        set_backend(pipe, attention)
    if compile:
        compile_pipeline(pipe)
    world_name = world or model_world(model, modality)
    prompts = eval_prompt_texts(world_name)
    points = []
    with atomic_dir(out, force=force) as tmp:
        for w in scales:
            folder = tmp / f"guidance-{w:g}"
            reports, samples = sample_and_score(
                pipe,
                prompts,
                folder,
                world=world_name,
                roles=(judge,),
                progress=progress,
                num_per_prompt=per_prompt,
                num_inference_steps=steps,
                guidance_scale=w,
                guidance_rescale=guidance_rescale,
                guidance_interval=guidance_interval,
                seed=seed,
                scheduler=scheduler,
                name=model,
            )
            report = reports[judge]
            points.append(
                SweepPoint(
                    guidance=float(w),
                    adherence=report.adherence,
                    attribute_adherence=report.attribute_adherence,
                    diversity=report.diversity,
                    frechet=report.frechet,
                    seconds_per_sample=samples.seconds / len(samples),
                    folder=folder.name,
                )
            )
        sweep = SweepReport(
            model=model,
            world=world_name,
            judge=judge,
            steps=steps,
            per_prompt=per_prompt,
            prompts=len(prompts),
            points=points,
            guidance_rescale=float(guidance_rescale),
            guidance_interval=tuple(float(x) for x in guidance_interval),
        )
        atomic_write_text(tmp / "sweep.json", sweep.to_json())
        atomic_write_text(tmp / "sweep.md", sweep.table() + "\n")
        plot = tradeoff_plot(
            {f"{model} + CFG": [(p.diversity or 0.0, p.adherence, f"w={p.guidance:g}") for p in points]},
            title=f"{world_name}: guidance sweep ({judge} judge, {steps} steps)",
        )
        write_png(tmp / "sweep.png", plot)
    return sweep
