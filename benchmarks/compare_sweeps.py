"""Overlay several ``mixstudio sweep`` reports: one adherence-diversity curve per sampler setting, one table.

Usage:
    .venv/bin/python benchmarks/compare_sweeps.py SWEEP_DIR [SWEEP_DIR ...] --out PLOT.png

Each folder holds the ``sweep.json`` that ``mixstudio sweep`` writes; its series is named by the guidance
settings it ran with (rescale ``φ``, guidance interval), so sweeps of one model that differ only in those
settings compare at a glance. Prints a Markdown table with every point of every sweep.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from studio.io import write_png
from studio.plots import tradeoff_plot


def series_name(report: dict) -> str:
    """``CFG``, ``CFG, φ=0.7``, ``CFG, t/T≤0.4`` or both, from a sweep report's guidance settings."""
    parts = ["CFG"]
    if report.get("guidance_rescale"):
        parts.append(f"φ={report['guidance_rescale']:g}")
    low, high = report.get("guidance_interval", (0.0, 1.0))
    if (low, high) != (0.0, 1.0):
        parts.append(f"t/T≤{high:g}" if low == 0 else f"t/T∈[{low:g},{high:g}]")
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", type=Path, nargs="+", help="folders written by `mixstudio sweep`")
    parser.add_argument("--out", type=Path, required=True, help="PNG of the overlaid curves")
    args = parser.parse_args()
    reports = []
    for folder in args.sweeps:
        path = folder / "sweep.json"
        if not path.is_file():
            raise SystemExit(f"error: {folder} has no sweep.json; pass folders that `mixstudio sweep` wrote")
        reports.append(json.loads(path.read_text()))
    if len({(r["model"], r["world"], r["steps"], r["per_prompt"]) for r in reports}) != 1:
        raise SystemExit("error: the sweeps differ in model, world, steps or -n; compare like with like")

    attrs = list(reports[0]["points"][0]["attribute_adherence"])
    head = ["setting", "guidance", "adherence", *attrs, "diversity", "Fréchet"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    series = {}
    for report in reports:
        name = series_name(report)
        series[name] = [(p["diversity"] or 0.0, p["adherence"], f"w={p['guidance']:g}") for p in report["points"]]
        for p in report["points"]:
            cells = [f"{p['attribute_adherence'].get(a, math.nan):.3f}" for a in attrs]
            print(
                f"| {name} | {p['guidance']:g} | {p['adherence']:.3f} | " + " | ".join(cells)
                + f" | {p['diversity']:.4f} | {p['frechet']:.2f} |"
            )  # fmt: skip
    first = reports[0]
    title = f"{first['model']}: guidance settings ({first['steps']} steps)"
    write_png(args.out, tradeoff_plot(series, title=title))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
