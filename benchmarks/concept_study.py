"""Teach the ``shapes`` model a concept it has never seen, with every adapter method and a learning-rate sweep.

Usage (each shard runs its share of the runs; results land in ``OUT/runs/<method>-x<mult>/result.json`` and a
finished run is skipped, so an interrupted study resumes):

    .venv/bin/python benchmarks/concept_study.py --out runs/concept-study --shard 0/2 &
    .venv/bin/python benchmarks/concept_study.py --out runs/concept-study --shard 1/2
    .venv/bin/python benchmarks/concept_study.py --out runs/concept-study --report docs/adapters

The concept is ``studio.worlds.concept``'s orange crescent (8 images, identifier prompt "a sks shape", class
prompt "a shape" with base-model prior-preservation samples shared by every run). Each run trains one adapter
for ``--steps`` steps at ``lr = base_lr × mult`` and is then scored with the *eval* judge, sampling at ``--guidance``
(default 2, the base model's best scale; the class samples use it too) with 25 DDIM steps on fixed seeds:

- fidelity: mean cosine similarity of eval-judge embeddings between samples of "a sks shape" and the concept
  images (the base model before training gives the floor; fresh renders of the concept give the ceiling);
- editability: how often the judge reads the colour, background or position that a prompt such as
  "a blue sks shape" or "a sks shape in the top left corner" asks for;
- prior preservation: the judge's hit rate on every attribute named by the world's 48 held-out prompts,
  before (base model) and after (adapter on).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from studio.adapters import METHODS
from studio.generation import generate
from studio.guidance import DEFAULT_GUIDANCE
from studio.io import atomic_write_text, read_image, write_png
from studio.judges import load_judge
from studio.judges.metrics import prompt_adherence
from studio.trainers.finetune import ConceptData, FinetuneConfig, FinetuneTrainer
from studio.worlds import get_world
from studio.worlds.base import to_tensor
from studio.worlds.concept import CONCEPT_COLOUR, render_concept, write_concept

INSTANCE, CLASS = "a sks shape", "a shape"
CONCEPT_IMAGES = 8
FIDELITY_SAMPLES = 8
#: Edits of the concept and the one attribute each asks for; two seeds each.
EDITS = (
    ("a blue sks shape", {"colour": "blue"}),
    ("a green sks shape", {"colour": "green"}),
    ("a pink sks shape", {"colour": "pink"}),
    ("a purple sks shape", {"colour": "purple"}),
    ("a sks shape on a white background", {"background": "white"}),
    ("a sks shape on a gray background", {"background": "gray"}),
    ("a sks shape in the top left corner", {"position": "top left"}),
    ("a sks shape at the bottom right", {"position": "bottom right"}),
)
EDIT_SEEDS = 2
STEPS = 25
MULTIPLIERS = (0.1, 0.3, 1.0, 3.0, 10.0)
#: Options beyond each method's defaults (DiffuseKronA has no default factor sizes).
METHOD_OPTIONS: dict[str, dict] = {"diffusekrona": {"a1": 4, "a2": 4}}


def run_name(method: str, mult: float) -> str:
    return f"{method}-x{mult:g}"


def prepare(out: Path, class_samples: int, guidance: float) -> None:
    """The concept images and (through a zero-step run) the shared class samples, once."""
    if not (out / "concept").is_dir():
        write_concept(out / "concept", CONCEPT_IMAGES, seed=0)
    if len(list((out / "class_samples").glob("*.png"))) < class_samples:
        FinetuneTrainer(config(out, "lora", 1e-3, 1, class_samples, out / "prepare", guidance)).setup()
    (out / "prepared").touch()


def config(
    out: Path, method: str, lr: float, steps: int, class_samples: int, folder: Path, guidance: float
) -> FinetuneConfig:
    return FinetuneConfig(
        base="shapes",
        out=folder,
        data=ConceptData(dir=out / "concept", instance_prompt=INSTANCE, class_prompt=CLASS),
        adapter={"method": method, **METHOD_OPTIONS.get(method, {})},
        class_samples=class_samples,
        class_dir=out / "class_samples",
        class_guidance=guidance,
        max_steps=steps,
        batch_size=4,
        lr=lr,
        lr_warmup_steps=10,
        checkpoint_every=steps,
        sample_every=0,
        sample_prompts=(INSTANCE,),
    )


def score(pipe, guidance: float, seed: int = 0) -> tuple[dict[str, float], list[np.ndarray]]:
    """Fidelity, editability and prior preservation of ``pipe``; also the samples shown in the grid."""
    world = get_world("shapes")
    judge = load_judge("shapes", "eval")
    concept = torch.stack([to_tensor(a) for a in render_concept(CONCEPT_IMAGES, seed=0)])

    texts = [INSTANCE] * FIDELITY_SAMPLES + [t for t, _ in EDITS for _ in range(EDIT_SEEDS)]
    seeds = [seed + i for i in range(len(texts))]
    sampling = {"guidance_scale": guidance, "num_inference_steps": STEPS}
    samples = generate(pipe, texts, seeds=seeds, **sampling).data
    held_out = world.eval_prompts()
    prior_seeds = [seed + 500 + i for i in range(48)]
    prior_samples = generate(pipe, [p.text for p in held_out], seeds=prior_seeds, **sampling).data

    with torch.no_grad():
        _, concept_emb = judge.predict(concept)
        judged, emb = judge.predict(torch.stack([to_tensor(s) for s in samples]))
        prior_judged, _ = judge.predict(torch.stack([to_tensor(s) for s in prior_samples]))
    fidelity = cosine(emb[:FIDELITY_SAMPLES], concept_emb)
    concept_colour = float(np.mean([j["colour"] == CONCEPT_COLOUR for j in judged[:FIDELITY_SAMPLES]]))
    edit_targets = [labels for _, labels in EDITS for _ in range(EDIT_SEEDS)]
    edits = prompt_adherence(judged[FIDELITY_SAMPLES:], edit_targets)
    prior = prompt_adherence(prior_judged, [p.labels for p in held_out])
    metrics = {
        "fidelity": fidelity,
        "concept_colour": concept_colour,
        "editability": pooled(edits),
        **{f"edit_{a}": v for a, v in edits.per_attribute.items()},
        "prior": pooled(prior),
        "prior_colour": prior.per_attribute["colour"],
    }
    shown = samples[:4] + [samples[FIDELITY_SAMPLES + EDIT_SEEDS * k] for k in (0, 1, 4, 6)]
    return metrics, shown


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine similarity over all pairs of rows of ``a`` and ``b``."""
    a, b = torch.nn.functional.normalize(a.float(), dim=1), torch.nn.functional.normalize(b.float(), dim=1)
    return float((a @ b.T).mean())


def pooled(adherence) -> float:
    """Hits over named attributes, pooled over attributes (so each named attribute counts once)."""
    hits = sum(adherence.per_attribute[a] * n for a, n in adherence.counts.items())
    return hits / sum(adherence.counts.values())


def run_one(
    out: Path, method: str, mult: float, base_lr: float, steps: int, class_samples: int, guidance: float
) -> None:
    folder = out / "runs" / run_name(method, mult)
    if (folder / "result.json").is_file():
        return
    cfg = config(out, method, base_lr * mult, steps, class_samples, folder, guidance)
    trainer = FinetuneTrainer(cfg, command=f"benchmarks/concept_study.py ({run_name(method, mult)})")
    start = time.perf_counter()
    train = trainer.fit()
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in trainer.pipe.unet.parameters() if p.requires_grad)
    trainer.pipe.unet.eval()
    with torch.no_grad():
        metrics, shown = score(trainer.pipe, guidance)
    write_png(folder / "shown.png", np.concatenate(shown, axis=1))
    result = {
        "method": method, "mult": mult, "lr": base_lr * mult, "steps": steps, "params": params,
        "guidance": guidance, "train_seconds": seconds, "final_loss": train.get("instance_mse"), **metrics,
    }  # fmt: skip
    atomic_write_text(folder / "result.json", json.dumps(result, indent=2) + "\n")
    print(json.dumps(result), flush=True)


def baseline(out: Path, guidance: float) -> dict:
    """The base model's scores (floor of fidelity, prior before) and the concept's own ceiling, once."""
    path = out / "base.json"
    if path.is_file():
        return json.loads(path.read_text())
    from studio.pipelines import load_pipeline

    pipe = load_pipeline("shapes", "image")
    metrics, shown = score(pipe, guidance)
    judge = load_judge("shapes", "eval")
    with torch.no_grad():
        _, train_emb = judge.predict(torch.stack([to_tensor(a) for a in render_concept(CONCEPT_IMAGES, seed=0)]))
        _, fresh_emb = judge.predict(torch.stack([to_tensor(a) for a in render_concept(CONCEPT_IMAGES, seed=1)]))
    metrics["fidelity_ceiling"] = cosine(fresh_emb, train_emb)
    metrics["guidance"] = guidance
    write_png(out / "base-shown.png", np.concatenate(shown, axis=1))
    atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")
    return metrics


def report(out: Path, docs: Path, guidance: float) -> None:
    """Markdown tables on stdout; ``concept_grid.png`` and ``lr_sweep.png`` under ``docs``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = baseline(out, guidance)
    results = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/result.json"))]
    methods = [m for m in METHODS if any(r["method"] == m for r in results)]
    at = {(r["method"], r["mult"]): r for r in results}
    mults = sorted({r["mult"] for r in results})

    print(
        f"Sampled at guidance {base['guidance']:g}. Base model: fidelity {base['fidelity']:.3f} "
        "(ceiling, fresh concept renders: "
        f"{base['fidelity_ceiling']:.3f}), editability {base['editability']:.3f}, prior {base['prior']:.3f}\n"
    )
    print("| method | params | train s | fidelity | concept colour | editability | prior before → after |")
    print("|---|---|---|---|---|---|---|")
    for m in methods:
        r = at.get((m, 1.0))
        if r:
            print(
                f"| `{m}` | {r['params']:,} | {r['train_seconds']:.0f} | {r['fidelity']:.3f} | "
                f"{r['concept_colour']:.2f} | {r['editability']:.3f} | {base['prior']:.3f} → {r['prior']:.3f} |"
            )
    for key in ("fidelity", "editability", "prior"):
        print(f"\n{key.capitalize()} across the learning-rate sweep (lr = 1e-3 × mult), and its spread max − min:\n")
        print("| method | " + " | ".join(f"×{m:g}" for m in mults) + " | spread |")
        print("|---|" + "---|" * (len(mults) + 1))
        for m in methods:
            values = [at[(m, k)][key] if (m, k) in at else None for k in mults]
            measured = [v for v in values if v is not None]
            cells = " | ".join("–" if v is None else f"{v:.3f}" for v in values)
            print(f"| `{m}` | {cells} | {max(measured) - min(measured):.3f} |")

    docs.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    titles = {"fidelity": "fidelity", "editability": "editability", "prior": "prior preservation"}
    for ax, (key, title) in zip(axes, titles.items(), strict=True):
        for m in methods:
            xs = [k for k in mults if (m, k) in at]
            ax.plot(xs, [at[(m, k)][key] for k in xs], marker="o", label=m)
        ax.axhline(base[key], color="gray", linestyle="--", label="base model")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate × (base 1e-3)")
        ax.set_title(title)
    axes[0].axhline(base["fidelity_ceiling"], color="black", linestyle=":", label="concept renders")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(docs / "lr_sweep.png", dpi=110)

    rows = [("concept images", np.concatenate(render_concept(CONCEPT_IMAGES, seed=0), axis=1))]
    rows.append(("base model", read_image(out / "base-shown.png")))
    rows += [(m, read_image(out / "runs" / run_name(m, 1.0) / "shown.png")) for m in methods if (m, 1.0) in at]
    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 1.0 * len(rows) + 0.4))
    fig.subplots_adjust(left=0.16, right=0.99, top=1 - 0.3 / fig.get_figheight(), bottom=0.01, hspace=0.12)
    for ax, (label, strip) in zip(axes, rows, strict=True):
        ax.imshow(strip, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    columns = '"a sks shape" ×4 | "a blue …" | "a green …" | "… on a white background" | "… in the top left corner"'
    axes[0].set_title(f"samples below: {columns}", fontsize=8)
    fig.savefig(docs / "concept_grid.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/concept-study"))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--mults", nargs="+", type=float, default=list(MULTIPLIERS))
    parser.add_argument("--base-lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--class-samples", type=int, default=32)
    parser.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE, help="of the class samples and scoring")
    parser.add_argument("--shard", default="0/1", help="K/N: run every N-th run starting at K")
    parser.add_argument("--report", type=Path, default=None, help="write tables and plots (to this docs folder)")
    args = parser.parse_args()
    if args.report is not None:
        report(args.out, args.report, args.guidance)
        return
    k, n = (int(x) for x in args.shard.split("/"))
    if k == 0:
        prepare(args.out, args.class_samples, args.guidance)
        baseline(args.out, args.guidance)
    while not (args.out / "prepared").exists():  # the other shards wait for shard 0's concept and class samples
        time.sleep(5)
    # every method at ×1 first, then the sweep from the extremes inwards, so a partial study is still a sweep
    mults = sorted(args.mults, key=lambda m: (m != 1, -abs(math.log(m))))
    jobs = [(m, mult) for mult in mults for m in args.methods]
    for method, mult in jobs[k::n]:
        run_one(args.out, method, mult, args.base_lr, args.steps, args.class_samples, args.guidance)


if __name__ == "__main__":
    main()
