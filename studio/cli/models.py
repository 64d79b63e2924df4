"""``mixstudio train``, ``merge`` and ``serve``: make models, combine them, and serve the app."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from studio.cli.common import COMPILE_HELP, add_out


def add_train(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="run a training recipe")
    train.add_argument("recipe", help="recipe name (see `mixstudio train list`)")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (repeatable, dotted keys for nested configs)",
    )
    train.add_argument(
        "--out", type=Path, default=None, help="run folder (default: the recipe's); resumed if it exists"
    )


def cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from studio.config import apply_overrides
    from studio.io import check_work_dir
    from studio.recipes import RECIPES, get_recipe, run_config

    if args.recipe == "list":
        for name, fn in sorted(RECIPES.items()):
            print(f"{name:<24} {(fn.__doc__ or '').strip()}")
        return 0
    config = apply_overrides(get_recipe(args.recipe), args.overrides)
    if args.out is not None:
        config = dataclasses.replace(config, out=args.out)
    check_work_dir(config.out, name="--out")
    command = "mixstudio " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""
    result = run_config(config, command=command)
    if int(os.environ.get("RANK", "0")) == 0:  # one summary for a data-parallel run, from its first process
        print(result)
    return 0


def add_merge(sub: argparse._SubParsersAction) -> None:
    merge = sub.add_parser(
        "merge",
        help="merge the UNet weights of two or more pipelines of one architecture, or adapters into their model",
    )
    merge.add_argument(
        "models",
        nargs="+",
        help="embedded names or pipeline folders (two or more); or a model followed by adapter .safetensors files",
    )
    how = merge.add_mutually_exclusive_group(required=True)
    how.add_argument(
        "--weights", type=float, nargs="+", help="one weight per model (sum 1: a mix), or one strength per adapter"
    )
    how.add_argument("--alpha", type=float, help="two models or adapters: (1 - alpha) * first + alpha * second")
    merge.add_argument("--modality", choices=("image", "music"), default=None, help="default: read from the models")
    add_out(merge, "output pipeline folder (replaced atomically)")


def cmd_merge(args: argparse.Namespace) -> int:
    from studio.merging import merge_adapter_files, merge_pipelines

    adapters = [m for m in args.models[1:] if m.endswith(".safetensors")]
    items = adapters or args.models
    if adapters and len(adapters) != len(args.models) - 1:
        raise ValueError("give a model followed only by adapter .safetensors files, or only models")
    if args.alpha is not None and len(items) != 2:
        raise ValueError(f"--alpha needs exactly two models or adapters, got {len(items)}; use --weights")
    weights = [1.0 - args.alpha, args.alpha] if args.alpha is not None else args.weights
    modality = {"image": "image", "music": "audio", None: None}[args.modality]
    mix = " + ".join(f"{w:g}·{m}" for w, m in zip(weights, items, strict=False))
    if adapters:
        merge_adapter_files(args.models[0], adapters, weights, args.out, modality=modality, force=args.force)
        print(f"wrote {args.models[0]} with adapters {mix} merged in to {args.out}")
    else:
        merge_pipelines(args.models, weights, args.out, modality=modality, force=args.force)
        print(f"wrote merged pipeline ({mix}) to {args.out}")
    return 0


def add_serve(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="start the web app (Gradio)")
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 exposes it)")
    serve.add_argument("--port", type=int, default=7860)
    serve.add_argument("--workdir", type=Path, default=Path("studio-app"), help="where the app writes every file")
    serve.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    serve.add_argument(
        "--model", action="append", default=[], type=Path, metavar="PATH", help="also offer this pipeline folder"
    )
    serve.add_argument("--compile", action="store_true", help=COMPILE_HELP)


def cmd_serve(args: argparse.Namespace) -> int:
    from studio.app import serve

    serve(
        workdir=args.workdir, host=args.host, port=args.port, share=args.share, models=args.model, compile=args.compile
    )
    return 0
