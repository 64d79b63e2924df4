"""Side by side: the same samples (prompt and seed) of two or more scored folders, one row block per folder.

Usage:
    .venv/bin/python benchmarks/compare_grids.py FOLDER [FOLDER ...] --contains star --out GRID.png

Each folder is one that ``mixstudio generate`` or ``mixstudio sweep`` writes (PNGs and ``manifest.json``);
items are matched by position, so the folders must come from the same prompts and seeds. Items whose prompt
contains ``--contains`` (every item if not given) are kept, up to ``--limit``; each folder's samples fill
``--rows`` rows. Prints which folder fills which rows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from studio.io import write_png
from studio.plots import image_grid


def chosen_items(folder: Path, contains: str | None, limit: int) -> list[dict]:
    items = json.loads((folder / "manifest.json").read_text())["items"]
    return [it for it in items if contains is None or contains in it["prompt"]][:limit]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--contains", default=None, help="keep items whose prompt contains this text")
    parser.add_argument("--limit", type=int, default=16, help="items per folder")
    parser.add_argument("--cols", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    reference = chosen_items(args.folders[0], args.contains, args.limit)
    images = []
    for folder in args.folders:
        items = chosen_items(folder, args.contains, args.limit)
        if [(it["prompt"], it.get("seed")) for it in items] != [(it["prompt"], it.get("seed")) for it in reference]:
            parser.error(f"{folder} does not hold the same prompts and seeds as {args.folders[0]}")
        images += [np.asarray(Image.open(folder / it["file"]).convert("RGB")) for it in items]
        print(f"{folder}: {len(items)} samples")
    write_png(args.out, image_grid(images, cols=args.cols, scale=3))
    print(f"wrote {args.out} ({len(reference)} prompts × seeds per folder, {args.cols} per row)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
