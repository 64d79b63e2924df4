"""Sample efficiency of reward finetuning runs: eval-judge adherence against reward queries and training time.

Usage:
    .venv/bin/python benchmarks/reward_efficiency.py LABEL=RUN_DIR [LABEL=RUN_DIR ...] [--target 0.9] \\
        [--plot docs/reward_finetune/efficiency.png]

Reads each run's ``evaluate.csv`` (written by the trainer at every ``sample_every`` steps: the step, the training
seconds without evaluation time, the reward queries so far, and the sample grid's eval-judge adherence) and
prints, per run, adherence at each evaluation, the queries and seconds at which it first reaches ``--target``
(linear interpolation between evaluations; "-" if never), and the ratio of queries against the first run's. With
``--plot`` it draws adherence against queries and against training minutes side by side.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path


def read(run: Path) -> list[dict[str, float]]:
    path = run / "evaluate.csv"
    if not path.is_file():
        raise SystemExit(f"error: {run} has no evaluate.csv; run a trainer with sample_every > 0 there")
    with path.open() as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def first_reach(rows: list[dict[str, float]], key: str, target: float, metric: str) -> float:
    """The ``key`` value at which ``metric`` first reaches ``target`` (linear between evaluations; NaN if never)."""
    previous = None
    for row in rows:
        if row.get(metric, -math.inf) >= target:
            if previous is None or previous.get(metric) is None:
                return row[key]
            a, b = previous[metric], row[metric]
            fraction = (target - a) / (b - a) if b != a else 1.0
            return previous[key] + fraction * (row[key] - previous[key])
        previous = row
    return math.nan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR")
    parser.add_argument("--target", type=float, default=0.9, help="eval-judge adherence to reach")
    parser.add_argument("--metric", default="sample_adherence")
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    runs = {label: read(Path(folder)) for label, _, folder in (item.partition("=") for item in args.runs)}
    reference = None
    print(f"target: {args.metric} >= {args.target}")
    print(
        f"{'run':<24} {'evals':>5} {'first':>6} {'best':>6} {'last':>6} {'queries':>8} {'minutes':>8} {'÷ queries':>9}"
    )
    for label, rows in runs.items():
        values = [r[args.metric] for r in rows if args.metric in r]
        queries = first_reach(rows, "reward_queries", args.target, args.metric)
        minutes = first_reach(rows, "train_seconds", args.target, args.metric) / 60
        reference = queries if reference is None else reference
        ratio = queries / reference if reference and not math.isnan(queries) else math.nan
        print(
            f"{label:<24} {len(values):>5} {values[0]:>6.3f} {max(values):>6.3f} {values[-1]:>6.3f} "
            f"{queries:>8.0f} {minutes:>8.1f} {ratio:>9.2f}"
        )
    if args.plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110, sharey=True)
        for label, rows in runs.items():
            kept = [r for r in rows if args.metric in r]
            axes[0].plot(
                [r.get("reward_queries", math.nan) for r in kept], [r[args.metric] for r in kept], "o-", label=label
            )
            axes[1].plot([r["train_seconds"] / 60 for r in kept], [r[args.metric] for r in kept], "o-", label=label)
        axes[0].set_xlabel("reward queries (samples scored by the reward judge)")
        axes[1].set_xlabel("training minutes (evaluation time excluded)")
        axes[0].set_ylabel("eval-judge adherence of the sample grid")
        for ax in axes:
            ax.axhline(args.target, color="gray", lw=0.8, ls="--")
            ax.grid(alpha=0.3)
        axes[0].legend()
        fig.tight_layout()
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
