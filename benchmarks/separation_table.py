"""The separation table of docs/SEPARATION.md: trained separators against the oracle and the mixture, a blend, seams.

Usage:
    .venv/bin/python benchmarks/separation_table.py --models bsrnn=runs/separate-synth/model \\
        hdemucs=runs/separate-synth-hdemucs/model [--test 200] [--blend-fit 64] [--json out.json]

- **Test set:** ``--test`` held-out ``synth`` mixtures from their own seed stream (``TEST_SEED_OFFSET`` plus the
  world's sample seeds of ``TEST_SEED``), disjoint from training (32-bit seeds of ``data_seed``) and from validation
  (``2**32`` plus ``val_seed``'s stream).
- **Rows:** each model given, a blend of them (per-stem least-squares weights fitted on ``--blend-fit`` validation
  mixtures, ``studio.separation.fit_blend``), the oracle ideal ratio mask (IRM1 from the true stems) and the
  mixture itself as every stem's estimate.
- **Columns:** BSS-eval v4 SDR per stem (museval's convention: median of 1 s frames, median over clips), its mean
  over stems, MDX's new SDR, SI-SDR and SI-SDR improvement (means over clips whose stem is audible).
- **Seams:** ten test clips concatenated into one 20.48 s input and separated in 2 s segments with 25% overlap,
  against the same clips separated one at a time: the SDR each loses at the seams.

``--export DIR`` also writes the fitted blend as a separator folder (``save_pretrained``) with a README card
holding this table: how the shipped ``synth-sep`` is made.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from studio.evaluation.separation import ideal_ratio_mask, mixture_as_estimate, separation_scores
from studio.separation import SYNTH_SOURCES, fit_blend, open_separator, separate
from studio.worlds import get_world, sample_seed

TEST_SEED, TEST_SEED_OFFSET = 5555, 2**33
VAL_SEED, VAL_SEED_OFFSET = 3141, 2**32  # the trainer's validation stream (studio/trainers/separate.py)


def clips(seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixtures ``(N, 1, T)`` and stems ``(N, S, 1, T)`` of world clips."""
    world = get_world("synth")
    stems = [world.sample(seed).extras["stems"] for seed in seeds]
    stems = torch.from_numpy(np.stack([[s[name] for name in SYNTH_SOURCES] for s in stems])).unsqueeze(2)
    return stems.sum(1), stems


def estimate(model, mixes: torch.Tensor) -> torch.Tensor:
    """``(N, S, 1, T)`` estimates, each clip separated on its own through the whole ``separate`` path."""
    return torch.stack([torch.from_numpy(np.stack(list(separate(model, m.numpy(), 16_000).values()))) for m in mixes])


def row(name: str, scores: dict[str, float], seconds: float | None = None) -> str:
    cells = [scores[f"sdr_{s}"] for s in SYNTH_SOURCES] + [scores[k] for k in ("sdr", "new_sdr", "si_sdr", "si_sdri")]
    timing = "" if seconds is None else f" {seconds:8.2f}"
    return f"| {name:<26} | " + " | ".join(f"{v:6.2f}" for v in cells) + f" |{timing}"


def seam_loss(model, mixes: torch.Tensor, stems: torch.Tensor) -> float:
    """Mean SDR of clips separated one by one minus that of the same clips inside one long input."""
    count = min(10, len(mixes))
    alone = separation_scores(estimate(model, mixes[:count]), stems[:count], mixes[:count], 16_000, SYNTH_SOURCES)
    long = torch.cat(list(mixes[:count]), dim=-1)
    joined = separate(model, long.numpy(), 16_000, segment=2.0, overlap=0.25)
    length = mixes.shape[-1]
    pieces = torch.stack(
        [torch.stack([torch.from_numpy(joined[s][:, i * length : (i + 1) * length]) for s in SYNTH_SOURCES])
         for i in range(count)]
    )  # fmt: skip
    together = separation_scores(pieces, stems[:count], mixes[:count], 16_000, SYNTH_SOURCES)
    return alone["sdr"] - together["sdr"]


def export_blend(blend, out: Path, results: dict[str, dict[str, float]], members: dict) -> None:
    """Save ``blend`` to ``out`` (written whole) with a card: the command, the members and the SDR table."""
    from studio.io import atomic_dir, atomic_write_text

    rows = "\n".join(row(name, scores) for name, scores in results.items())
    card = f"""# synth-sep: a source separator for the synth world (drums, bass, lead)

A per-stem linear blend (Danna-Sep's lesson) of two separators trained on the same data for the same wall-clock
budget, one CPU thread each: {", ".join(members)}. Blend weights fitted by least squares on 64 validation mixtures.

- Made by: `{" ".join(["python", *sys.argv])}`
- Members: `mixstudio train separate-synth --set max_steps=900` (band-split RNN, 41.7 min, 900 steps) and
  `mixstudio train separate-synth-hdemucs --set max_steps=1100` (torchaudio HDemucs, 41.1 min, 1100 steps), each on
  one thread of a 2-core CPU, beside each other.
- 16 kHz mono; 3.2 + 9.0 MB of float32 weights. Speed and details: docs/SEPARATION.md.

Held-out synth mixtures (disjoint seeds), dB:

| separator | SDR drums | SDR bass | SDR lead | SDR | new SDR | SI-SDR | SI-SDRi |
|---|---|---|---|---|---|---|---|
{rows}
"""
    with atomic_dir(out, name="--export", force=False) as tmp:
        blend.save_pretrained(tmp)
        atomic_write_text(tmp / "README.md", card)
    print(f"wrote the blend to {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True, metavar="NAME=FOLDER")
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--blend-fit", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    parser.add_argument("--export", type=Path, default=None, help="write the fitted blend here (a separator folder)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = {}
    for item in args.models:
        name, _, folder = item.partition("=")
        models[name] = open_separator(folder)
    mixes, stems = clips([TEST_SEED_OFFSET + sample_seed(TEST_SEED, i) for i in range(args.test)])
    results: dict[str, dict[str, float]] = {}
    header = "| separator | " + " | ".join(f"SDR {s}" for s in SYNTH_SOURCES) + " | SDR | new SDR | SI-SDR | SI-SDRi |"
    print(f"{args.test} held-out synth mixtures, 16 kHz mono; dB; s/clip at {args.threads} threads\n")
    print(header + " s/clip")
    estimates = {}
    for name, model in models.items():
        start = time.perf_counter()
        estimates[name] = estimate(model, mixes)
        seconds = (time.perf_counter() - start) / len(mixes)
        results[name] = separation_scores(estimates[name], stems, mixes, 16_000, SYNTH_SOURCES)
        print(row(name, results[name], seconds), flush=True)
    if len(models) > 1:
        fit_mixes, fit_stems = clips([VAL_SEED_OFFSET + sample_seed(VAL_SEED, i) for i in range(args.blend_fit)])
        blend = fit_blend(list(models.values()), fit_mixes, fit_stems)
        weights = blend.weights.tolist()
        results["blend"] = separation_scores(estimate(blend, mixes), stems, mixes, 16_000, SYNTH_SOURCES)
        print(row("blend (" + " + ".join(models) + ")", results["blend"]))
        print(f"blend weights per stem (rows {list(SYNTH_SOURCES)}, columns {list(models)}): {weights}")
    results["oracle IRM"] = separation_scores(ideal_ratio_mask(stems), stems, mixes, 16_000, SYNTH_SOURCES)
    results["mixture as estimate"] = separation_scores(
        mixture_as_estimate(mixes, len(SYNTH_SOURCES)), stems, mixes, 16_000, SYNTH_SOURCES
    )
    for name in ("oracle IRM", "mixture as estimate"):
        print(row(name, results[name]))
    if args.export is not None and len(models) > 1:
        export_blend(blend, args.export, results, models)
    for name, model in models.items():
        loss = seam_loss(model, mixes, stems)
        results[name]["seam_loss_db"] = loss
        print(f"{name}: 10 clips in one 20.48 s input (2 s segments, 25% overlap) lose {loss:.2f} dB SDR at seams")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: {m: (None if math.isnan(v) else v) for m, v in r.items()} for k, r in results.items()}, f)


if __name__ == "__main__":
    main()
