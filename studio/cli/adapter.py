"""``mixstudio adapter export|import``: move adapters to and from PEFT, diffusers, kohya/A1111, LyCORIS and dense."""

from __future__ import annotations

import argparse
from pathlib import Path

#: For the help text only (building the parser imports no torch); ``studio.adapters.formats.FORMATS`` decides.
FORMAT_NAMES = "peft, diffusers, kohya, lycoris, dense"


def add_adapter_command(sub: argparse._SubParsersAction) -> None:
    adapter = sub.add_parser("adapter", help="export an adapter to another tool's format, or import one")
    actions = adapter.add_subparsers(dest="action", required=True)
    export = actions.add_parser(
        "export",
        help="write an adapter file in another format",
        description="peft and diffusers write a folder (with a README.md model card); the others one .safetensors "
        "file. A method a format cannot hold exactly is refused, naming the formats that can (dense holds all).",
    )
    export.add_argument("adapter", type=Path, help="the adapter (RUN_DIR/adapter.safetensors)")
    export.add_argument("--format", required=True, metavar="FORMAT", help=f"one of: {FORMAT_NAMES}")
    export.add_argument("--out", type=Path, required=True, help="the folder (peft, diffusers) or .safetensors file")
    export.add_argument(
        "--base", default=None, metavar="MODEL", help="the base model (needed by dense for orthogonal methods)"
    )
    export.add_argument("--force", action="store_true", help="replace --out even if mixstudio did not write it")
    imp = actions.add_parser(
        "import",
        help="convert a PEFT/diffusers folder or a diffusers, kohya, LyCORIS or dense file to a mixstudio adapter",
    )
    imp.add_argument("path", type=Path, help="the file or folder to read (its format is detected)")
    imp.add_argument("--out", type=Path, required=True, help="the mixstudio adapter file to write (.safetensors)")
    imp.add_argument(
        "--base", default=None, metavar="MODEL", help="the base model: resolves layer names and checks every shape"
    )
    imp.add_argument("--force", action="store_true", help="replace --out even if mixstudio did not write it")


def cmd_adapter(args: argparse.Namespace) -> int:
    from studio.adapters.formats import FORMATS, detect_format, export_adapter, import_adapter
    from studio.checks import check_choice

    if args.action == "export":
        check_choice("--format", args.format, FORMATS)
        detect_format(args.adapter)  # a missing or unreadable file fails before any base model loads
        out = export_adapter(args.adapter, args.format, args.out, base_model=args.base, force=args.force)
        print(f"wrote {args.format} export of {args.adapter} to {out}")
        return 0
    detect_format(args.path)
    out = import_adapter(args.path, args.out, base_model=args.base, force=args.force)
    print(f"wrote mixstudio adapter {out} (from {detect_format(args.path)} {args.path})")
    return 0
