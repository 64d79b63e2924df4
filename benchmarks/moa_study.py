"""How well a personalisation method draws a held-out subject in an asked context, and what it keeps of the base.

Usage:
    .venv/bin/python benchmarks/moa_study.py LABEL=METHOD [LABEL=METHOD ...] [--subjects 12] [--contexts 4] \\
        [--seeds 2] [--steps 25] [--only held-out:K] [--out docs/moa/study]

Methods:
    base           the base model with the class prompt ("a large shape in the top left on navy"): the floor
    oracle         the subject rendered exactly in the asked context: the ceiling of every measure
    moa:RUN[@S]    a mixture-of-attention run at strength S (default 1): an encoder run reads the subject's
                   reference image; a subject-mode run draws its own subject (use it with --only)
    adapter:FILE[@S]  a DreamBooth adapter of the base (``mixstudio train finetune``, LoRA, OFT, ...) at strength
                   S (with --only)

For held-out subjects (combinations of silhouette, pattern and colours never trained on) × held-out context
prompts (position, size and background named in the world's evaluation phrasing) × seeds, every method samples
the same prompts and seeds, and the study measures in pixels (``studio.evaluation.subjects``):

- ``iou``: the sample's object against the exact rendering of the subject in the asked context (silhouette,
  rotation, place and size together); ``shape``: the same with the sample's object moved onto the rendering's
  centroid (silhouette, rotation and size: the subject's identity without its placement);
- ``colour``: share of the object's pixels whose nearest palette colour is one of the subject's;
- ``background``: share of samples whose border is the asked background colour;
- ``bg_psnr``: context preservation, PSNR against the base sample of the same prompt and seed outside both
  objects (capped at 99 dB: identical);
- ``prior_psnr``: prior preservation, PSNR against the base on the world's held-out prompts that do not name
  the subject (the method should leave them alone; capped at 99 dB);
- ``s_per_image``: sampling time, measured here side by side.

It prints one table row per method and, with ``--out``, writes ``grid.png`` (per subject: the reference, then
each method's first sample), ``cases.png`` (one row per method: its first 8 samples of the first subject, the
contexts in order) and ``study.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def contexts_for(count: int, seed: int) -> list[dict[str, str]]:
    """``count`` contexts (position, size, background), spread so each background appears."""
    from studio.worlds.concept import SUBJECT_SIZES
    from studio.worlds.shapes import ATTRIBUTES

    rng = np.random.default_rng(seed)
    backgrounds = list(ATTRIBUTES["background"])
    return [
        {
            "position": ATTRIBUTES["position"][int(rng.integers(9))],
            "size": SUBJECT_SIZES[int(rng.integers(len(SUBJECT_SIZES)))],
            "background": backgrounds[k % len(backgrounds)],
        }
        for k in range(count)
    ]


def context_prompt(context: dict[str, str], rng: np.random.Generator, identifier: str | None) -> str:
    """``a large [sks] shape <position> <background>`` in the world's held-out phrasing."""
    from studio.worlds.shapes import ShapesWorld

    table = ShapesWorld.phrases
    parts = (table.pick(a, context[a], rng, "held_out") for a in ("size", "position", "background"))
    size, position, background = parts
    subject = f"{identifier} shape" if identifier else "shape"
    article = "an" if size[0] in "aeiou" else "a"
    return f"{article} {size} {subject} {position} {background}"


def measure(image: np.ndarray, subject, context: dict[str, str]) -> dict[str, float]:
    from studio.evaluation.subjects import centred_iou, colour_share, foreground_mask, mask_iou, nearest_colour
    from studio.worlds.concept import render_subject
    from studio.worlds.shapes import BACKGROUND_RGB, OBJECT_RGB

    _, coverage = render_subject(subject, np.random.default_rng(0), jitter=False, **context)
    palette = {**OBJECT_RGB, **BACKGROUND_RGB}
    mask = foreground_mask(image, BACKGROUND_RGB[context["background"]])
    border = nearest_colour(image, palette)
    border = np.concatenate([border[0], border[-1], border[1:-1, 0], border[1:-1, -1]])
    return {
        "iou": mask_iou(mask, coverage > 0.5),
        "shape": centred_iou(mask, coverage > 0.5),
        "colour": colour_share(image, mask, [subject.primary, subject.secondary], palette),
        "background": float((border == context["background"]).mean() > 0.5),
    }


class Method:
    """One way to draw the subject: ``sample(prompts_with_id, prompts_without, seeds, subject, reference)``."""

    def __init__(self, label: str, spec: str, pipe, steps: int, guidance: float):
        self.label, self.spec, self.pipe, self.steps, self.guidance = label, spec, pipe, steps, guidance
        kind, _, rest = spec.partition(":")
        path, _, strength = rest.partition("@")
        self.kind, self.path, self.strength = kind, path, float(strength) if strength else 1.0
        if kind not in ("base", "oracle", "moa", "adapter"):
            raise SystemExit(f"error: method {spec!r} is not base, oracle, moa:RUN[@S] or adapter:FILE[@S]")
        self.moa = None
        if kind == "moa":
            from studio.attention.moa import MoA

            self.moa = MoA.load(path, pipe.unet)
        self.seconds, self.images = 0.0, 0

    def sample(self, marked: list[str], plain: list[str], seeds: list[int], subject, reference, contexts):
        from studio.generation import generate
        from studio.worlds.concept import render_subject

        if self.kind == "oracle":
            return [render_subject(subject, np.random.default_rng(0), jitter=False, **c)[0] for c in contexts]
        settings = {"seeds": seeds, "num_inference_steps": self.steps, "guidance_scale": self.guidance}
        start = time.perf_counter()
        if self.kind == "base":
            out = generate(self.pipe, plain, **settings)
        elif self.kind == "adapter":
            out = generate(self.pipe, marked, adapters=[(Path(self.path), self.strength)], **settings)
        else:
            subject_image = reference if self.moa.settings.mode == "encoder" else None
            out = generate(self.pipe, marked, moa=self.moa, subject=subject_image, moa_strength=self.strength,
                           **settings)  # fmt: skip
        self.seconds += time.perf_counter() - start
        self.images += len(seeds)
        return out.data

    def sample_prior(self, prompts: list[str], seeds: list[int]) -> list[np.ndarray] | None:
        from studio.generation import generate

        settings = {"seeds": seeds, "num_inference_steps": self.steps, "guidance_scale": self.guidance}
        if self.kind == "oracle":
            return None
        if self.kind == "adapter":
            return generate(self.pipe, prompts, adapters=[(Path(self.path), self.strength)], **settings).data
        if self.kind == "moa":
            reference = np.full((self.pipe.default_size,) * 2 + (3,), 128, np.uint8)
            subject = reference if self.moa.settings.mode == "encoder" else None
            return generate(self.pipe, prompts, moa=self.moa, subject=subject, moa_strength=self.strength,
                            **settings).data  # fmt: skip
        return generate(self.pipe, prompts, **settings).data


def mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.fmean(finite) if finite else math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("methods", nargs="+", help="LABEL=METHOD (base, oracle, moa:RUN[@S], adapter:FILE[@S])")
    parser.add_argument("--subjects", type=int, default=12, help="held-out subjects, spread over the list")
    parser.add_argument("--only", help="one subject (held-out:K or a name) for per-subject methods")
    parser.add_argument("--patterns", help="only held-out subjects of these patterns, e.g. solid,split,rim")
    parser.add_argument("--contexts", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--prior-prompts", type=int, default=16, help="held-out world prompts for prior_psnr")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if min(args.subjects, args.contexts, args.seeds, args.steps) < 1 or args.seeds > 10:
        parser.error("--subjects, --contexts, --steps must be >= 1 and --seeds in 1..10")

    import torch

    from studio.evaluation.subjects import foreground_mask, masked_psnr
    from studio.guidance import DEFAULT_GUIDANCE
    from studio.pipelines import load_pipeline
    from studio.plots import image_grid
    from studio.worlds import get_world
    from studio.worlds.concept import all_subjects, reference_image, subject_by_name

    torch.manual_seed(0)
    pipe = load_pipeline("shapes", "image")
    labels = [m.partition("=") for m in args.methods]
    methods = [Method(label, spec, pipe, args.steps, DEFAULT_GUIDANCE) for label, _, spec in labels]
    base = next((m for m in methods if m.kind == "base"), None) or Method("base", "base", pipe, args.steps,
                                                                          DEFAULT_GUIDANCE)  # fmt: skip
    if args.only:
        subjects = [subject_by_name(args.only)]
    else:
        held = all_subjects("held_out")
        if args.patterns:
            held = [s for s in held if s.pattern in args.patterns.split(",")]
        subjects = held[:: max(1, len(held) // args.subjects)][: args.subjects]
    contexts = contexts_for(args.contexts, seed=7)
    scores: dict[str, dict[str, list[float]]] = {m.label: {} for m in methods}
    cells: list[np.ndarray] = []
    first_cases: dict[str, list[np.ndarray]] = {}  # the first subject's first 8 samples per method
    for k, subject in enumerate(subjects):
        reference = reference_image(subject)
        rng = np.random.default_rng(k)
        cases = [(c, s) for c in contexts for s in range(args.seeds)]
        phrase_seeds = [int(rng.integers(2**31)) for _ in contexts]
        marked = [context_prompt(c, np.random.default_rng(phrase_seeds[contexts.index(c)]), "sks") for c, _ in cases]
        plain = [context_prompt(c, np.random.default_rng(phrase_seeds[contexts.index(c)]), None) for c, _ in cases]
        seeds = [1000 * k + 10 * contexts.index(c) + s for c, s in cases]
        asked = [c for c, _ in cases]
        base_images = base.sample(marked, plain, seeds, subject, reference, asked)
        row = [reference]
        for method in methods:
            images = base_images if method is base else method.sample(marked, plain, seeds, subject, reference, asked)
            row.append(images[0])
            if k == 0:
                first_cases[method.label] = list(images[:8])
            for image, plain_image, context in zip(images, base_images, asked, strict=True):
                for name, value in measure(image, subject, context).items():
                    scores[method.label].setdefault(name, []).append(value)
                keep = ~(foreground_mask(image) | foreground_mask(plain_image))  # background in both
                scores[method.label].setdefault("bg_psnr", []).append(min(masked_psnr(image, plain_image, keep), 99.0))
        cells += row
        print(f"subject {k + 1}/{len(subjects)}: {subject.name}", file=sys.stderr)

    prior_prompts = [p.text for p in get_world("shapes").eval_prompts()[: args.prior_prompts]]
    prior_seeds = list(range(len(prior_prompts)))
    prior_base = base.sample_prior(prior_prompts, prior_seeds)
    for method in methods:
        images = prior_base if method is base else method.sample_prior(prior_prompts, prior_seeds)
        psnrs = [math.nan] if images is None else [min(masked_psnr(a, b), 99.0) for a, b in zip(images, prior_base)]
        scores[method.label]["prior_psnr"] = psnrs

    columns = ["iou", "shape", "colour", "background", "bg_psnr", "prior_psnr"]
    rows = []
    print(f"\n{len(subjects)} held-out subjects x {len(contexts)} contexts x {args.seeds} seeds, {args.steps} steps")
    print(f"{'method':<22}" + "".join(f"{c:>12}" for c in columns) + f"{'s/image':>10}")
    for method in methods:
        values = {c: mean(scores[method.label][c]) for c in columns}
        per_image = method.seconds / method.images if method.images else math.nan
        rows.append({"method": method.label, "spec": method.spec, **values, "s_per_image": per_image})
        print(f"{method.label:<22}" + "".join(f"{values[c]:>12.3f}" for c in columns) + f"{per_image:>10.3f}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        from studio.io import write_png

        write_png(args.out / "grid.png", image_grid(cells, cols=1 + len(methods), scale=3))
        cases = [image for method in methods for image in first_cases[method.label]]
        write_png(args.out / "cases.png", image_grid(cases, cols=len(first_cases[methods[0].label]), scale=3))
        study = {"subjects": [s.name for s in subjects], "contexts": contexts, "seeds": args.seeds,
                 "steps": args.steps, "rows": rows}  # fmt: skip
        (args.out / "study.json").write_text(json.dumps(study, indent=2) + "\n")
        print(f"wrote {args.out}/grid.png, cases.png and study.json")


if __name__ == "__main__":
    main()
