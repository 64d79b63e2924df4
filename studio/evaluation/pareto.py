"""Adherence-diversity Pareto evaluation of CFG distillation: the base model with guidance against its students.

Points (each a folder that ``mixstudio eval`` scores the same way):

- the base model with classifier-free guidance at each ``w`` (the curve to beat);
- every student sampled *without* guidance (one UNet call per step); a guidance-conditioned student (one that
  reads ``w`` as an input) at every ``w`` of the CFG curve instead, still one UNet call per step;
- weight-space merges of a quality student and a diversity student at each ``λ``
  (``θ = (1 − λ)·θ_quality + λ·θ_diversity``), the deployment-time slider.

Every point is scored by the eval judge (the reported numbers) and by the reward judge (what the
trainers optimised), side by side, so reward hacking shows as a gap. A point is *Pareto-better than
CFG* when it has higher adherence and higher diversity than the guided base model at some ``w``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.evaluation.sweep import check_per_prompt, sample_and_score
from studio.generation import eval_prompt_texts, model_world
from studio.io import atomic_dir, atomic_write_text, check_output_dir, write_png
from studio.plots import tradeoff_plot

DEFAULT_SCALES = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
DEFAULT_LAMBDAS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: How the two students behind the merge slider are labelled in reports and plots.
QUALITY, DIVERSITY = "quality student (β = 0)", "diversity student (β > 0)"


@dataclass
class ParetoPoint:
    """One sampled configuration and its scores under both judges.

    ``dominates`` lists the CFG settings (``w=…``) this point beats on both adherence and diversity.
    """

    method: str
    setting: str
    model: str
    guidance: float
    adherence: float
    diversity: float
    reward_adherence: float
    reward_diversity: float
    seconds_per_sample: float
    folder: str
    dominates: list[str] = dataclasses.field(default_factory=list)


@dataclass
class ParetoReport:
    base: str
    world: str
    steps: int
    per_prompt: int
    prompts: int
    points: list[ParetoPoint]

    def table(self) -> str:
        """A Markdown table: one row per point, eval judge then reward judge."""
        head = (
            "| method | setting | adherence | diversity | reward-judge adherence | reward-judge diversity "
            "| s/sample | beats CFG at |"
        )
        rows = [
            f"| {p.method} | {p.setting} | {p.adherence:.3f} | {p.diversity:.4f} | {p.reward_adherence:.3f} | "
            f"{p.reward_diversity:.4f} | {p.seconds_per_sample:.3f} | {', '.join(p.dominates) or '-'} |"
            for p in self.points
        ]
        title = (
            f"base `{self.base}` · world {self.world} · {self.prompts} held-out prompts × {self.per_prompt} · "
            f"{self.steps} steps · adherence and diversity by the eval judge unless marked"
        )
        return "\n".join([title, "", head, "|" + "---|" * 8, *rows])

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)


def mark_dominance(points: list[ParetoPoint]) -> None:
    """Fill each non-CFG point's ``dominates`` with the CFG settings it beats on adherence and diversity."""
    cfg = [p for p in points if p.method == "CFG"]
    for point in points:
        if point.method != "CFG":
            point.dominates = [
                c.setting for c in cfg if point.adherence > c.adherence and point.diversity > c.diversity
            ]


def pareto_eval(
    base: str,
    modality: str,
    *,
    out: str | Path,
    students: dict[str, str] | None = None,
    quality: str | None = None,
    diversity: str | None = None,
    scales: tuple[float, ...] = DEFAULT_SCALES,
    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS,
    per_prompt: int = 4,
    steps: int = 25,
    seed: int = 0,
    world: str | None = None,
    progress: bool = True,
    compile: bool = False,
    force: bool = False,
    attention: str | None = None,
) -> ParetoReport:
    """Sample and score the base model's CFG curve, the students and the quality-diversity merges.

    Args:
        base: the teacher: embedded name, pipeline folder or hub id.
        modality: ``image`` or ``audio``.
        out: folder for every point's samples and ``pareto.json``, ``pareto.md``, ``pareto.png``
            (written atomically: an existing folder is replaced only when everything succeeded).
        students: extra unguided models to score, ``{label: model}``.
        quality, diversity: the β = 0 and β > 0 students; with both, merges at each ``λ`` are scored.
        scales: the base model's guidance scales.
        lambdas: merge weights of the diversity student (0 = quality student, 1 = diversity student).
        per_prompt, steps, seed: sampling settings shared by every point.
        world: the world whose held-out prompts and judges are used (default: the base model's).
        force: replace ``out`` even if it holds files mixstudio did not write.
        attention: the UNets' attention backend (``studio.attention.BACKENDS``; None: the models' own).
        compile: compile each model's UNet once, before its first point (``studio.pipelines.compile_pipeline``).

    Raises:
        ValueError: for ``per_prompt < 2``, only one of ``quality``/``diversity``, a λ outside [0, 1],
            a student that does not load, or an unwritable ``out``; all before any sampling.
    """
    from studio.merging import merge_pipelines

    check_per_prompt(per_prompt)
    if (quality is None) != (diversity is None):
        raise ValueError("merges need both --quality and --diversity students (or neither)")
    if any(not 0 <= lam <= 1 for lam in lambdas):
        raise ValueError(f"merge weights λ must be in [0, 1], got {list(lambdas)}")
    out = check_output_dir(out, force=force)
    unguided = dict(students or {})
    if quality is not None:
        unguided |= {QUALITY: quality, DIVERSITY: diversity}
    world = world or model_world(base, modality)
    prompts = eval_prompt_texts(world)
    # load every student once before any sampling, so a bad path fails in seconds, not after the CFG curve
    conditioned = {label: reads_guidance(model, modality) for label, model in unguided.items()}
    points: list[ParetoPoint] = []
    with atomic_dir(out, force=force) as tmp:
        loaded: dict[str, Any] = {}

        def pipeline(model: str) -> Any:
            """Each model is loaded (and compiled) once, however many points it serves."""
            from studio.pipelines import compile_pipeline, load_pipeline

            if model not in loaded:
                loaded[model] = load_pipeline(model, modality)
                if attention is not None:
                    from studio.attention import set_backend

                    set_backend(loaded[model], attention)
                if compile:
                    compile_pipeline(loaded[model])
            return loaded[model]

        def score(method: str, setting: str, model: str, guidance: float, folder: str) -> None:
            judged, samples = sample_and_score(
                pipeline(model),
                prompts,
                tmp / folder,
                world=world,
                roles=("eval", "reward"),
                progress=progress,
                num_per_prompt=per_prompt,
                num_inference_steps=steps,
                guidance_scale=guidance,
                seed=seed,
                name=model,
            )
            points.append(
                ParetoPoint(
                    method=method,
                    setting=setting,
                    model=model,
                    guidance=guidance,
                    adherence=judged["eval"].adherence,
                    diversity=judged["eval"].diversity or 0.0,
                    reward_adherence=judged["reward"].adherence,
                    reward_diversity=judged["reward"].diversity or 0.0,
                    seconds_per_sample=samples.seconds / len(samples),
                    folder=folder,
                )
            )

        for w in scales:
            score("CFG", f"w={w:g}", base, w, f"cfg-{w:g}")
        for i, (label, model) in enumerate(unguided.items()):
            if conditioned[label]:  # the student's own slider: one UNet call at every w
                for w in scales:
                    score(label, f"w={w:g}", model, w, f"student-{i}-w{w:g}")
            else:
                score(label, "w=1", model, 1.0, f"student-{i}")
        if quality is not None:
            for lam in lambdas:
                merged = tmp / "merges" / f"lambda-{lam:g}"
                merge_pipelines([quality, diversity], [1 - lam, lam], merged, modality=modality)
                score("merge", f"λ={lam:g}", str(merged), 1.0, f"merge-{lam:g}")
        mark_dominance(points)
        report = ParetoReport(
            base=base, world=world, steps=steps, per_prompt=per_prompt, prompts=len(prompts), points=points
        )
        atomic_write_text(tmp / "pareto.json", report.to_json())
        atomic_write_text(tmp / "pareto.md", report.table() + "\n")
        title = f"{world}: CFG vs distilled students"
        write_png(tmp / "pareto.png", tradeoff_plot(plot_series(points, base), title=title))
    return report


def reads_guidance(model: str, modality: str) -> bool:
    """Whether ``model``'s UNet takes the guidance scale as an input (a guidance-conditioned student)."""
    from studio.pipelines import load_pipeline

    return load_pipeline(model, modality).guidance_conditioned


def plot_series(points: list[ParetoPoint], base: str) -> dict[str, list[tuple[float, float, str]]]:
    """``(diversity, adherence, label)`` lines: the CFG curve, each student, and the merge slider's path.

    The merge line runs from the quality student through the merges (by λ) to the diversity student, so the
    plot shows the path the slider walks; a student sampled at one ``w`` is a single point, drawn after the
    slider's line so that its marker stays visible on the line's ends.
    """
    groups: dict[str, list[ParetoPoint]] = {}
    for p in points:
        groups.setdefault(p.method, []).append(p)

    def line(group: list[ParetoPoint], label) -> list[tuple[float, float, str]]:
        return [(p.diversity, p.adherence, label(p)) for p in group]

    series = {f"{base} + CFG": line(groups["CFG"], lambda p: p.setting)} if "CFG" in groups else {}
    merges = sorted(groups.get("merge", []), key=lambda p: float(p.setting.removeprefix("λ=")))
    if merges:
        quality, diversity = groups.get(QUALITY, []), groups.get(DIVERSITY, [])
        path = line(quality, lambda p: "λ=0") if len(quality) == 1 else []
        path += line(merges, lambda p: p.setting)
        path += line(diversity, lambda p: "λ=1") if len(diversity) == 1 else []
        series["merges (slider)"] = path
    for method, group in groups.items():
        if method not in ("CFG", "merge"):
            swept = len(group) > 1
            series[method] = line(group, lambda p, swept=swept: p.setting if swept else "")
    return series
