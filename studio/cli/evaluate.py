"""``mixstudio eval``: score a folder of samples, or (``--pareto``) CFG against distilled students."""

from __future__ import annotations

import argparse
from pathlib import Path

from studio.cli.common import COMPILE_HELP, check_model_and_world, check_sampling_flags, modality_of

#: World samples ``--reference`` may ask for (each one is rendered and judged).
MAX_REFERENCE = 10_000


def add_eval(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser(
        "eval",
        help="score a folder of samples described by manifest.json, or (--pareto) CFG against distilled students",
    )
    ev.add_argument("folder", type=Path, nargs="?", default=None, help="samples folder (not with --pareto)")
    ev.add_argument("--judge", choices=("eval", "reward"), default="eval", help="which judge scores")
    ev.add_argument(
        "--reference",
        default=None,
        help=f"world samples in the Fréchet reference (2 to {MAX_REFERENCE}, default 256); with --separation: the "
        "folder of true stems",
    )
    ev.add_argument(
        "--separation", type=Path, default=None, metavar="EST", help="score stems `mixstudio separate` wrote"
    )
    ev.add_argument("--out", type=Path, default=None, help="report path (default: FOLDER/eval.json); --pareto: folder")
    ev.add_argument("--force", action="store_true", help="--pareto: replace --out even if mixstudio did not write it")
    pareto = ev.add_argument_group("--pareto: the base model's CFG curve against unguided students and their merges")
    pareto.add_argument("--pareto", choices=("image", "music"), default=None, help="modality of the models")
    pareto.add_argument("--model", default=None, help="the base (teacher) model (default: shapes or synth)")
    pareto.add_argument("--quality", default=None, help="the beta = 0 student (with --diversity: merges too)")
    pareto.add_argument("--diversity", default=None, help="the beta > 0 student")
    pareto.add_argument("--student", action="append", default=[], metavar="LABEL=MODEL", help="more students")
    pareto.add_argument("--guidance", type=float, nargs="+", default=None, help="base model's guidance scales")
    pareto.add_argument("--lambdas", type=float, nargs="+", default=None, help="merge weights of --diversity")
    pareto.add_argument("-n", type=int, default=4, help="samples per prompt (>= 2)")
    pareto.add_argument("--steps", type=int, default=25, help="sampler steps")
    pareto.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    pareto.add_argument("--attention", default=None, metavar="NAME", help="attention backend (see generate)")


def cmd_eval(args: argparse.Namespace) -> int:
    from studio.checks import check_int
    from studio.evaluation import evaluate_folder, write_report

    if args.pareto is not None:
        return cmd_pareto(args)
    if args.separation is not None:
        return cmd_separation(args)
    if args.folder is None:
        raise ValueError("give a samples FOLDER to score, or --pareto image|music with --out DIR")
    args.reference = check_int("--reference", _whole(args.reference, 256), 2, MAX_REFERENCE)
    out = args.out or args.folder / "eval.json"
    if out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a folder; pass a file path such as report.json")
    report = evaluate_folder(args.folder, role=args.judge, reference_size=args.reference)
    write_report(report, out)
    print(report.table())
    print(f"report: {out}")
    return 0


def _whole(text: str | None, default: int) -> int | str:
    """``--reference`` as a count: its integer value, or the text itself when it is none (for the message)."""
    if text is None:
        return default
    try:
        return int(text)
    except ValueError:
        return text


def cmd_separation(args: argparse.Namespace) -> int:
    from studio.evaluation.folder import write_report
    from studio.evaluation.stems import evaluate_separation

    if args.folder is not None or args.reference is None:
        raise ValueError("--separation EST needs --reference REF (the true stems) and no samples FOLDER")
    out = args.out or args.separation / "eval-separation.json"
    if out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a folder; pass a file path such as report.json")
    report = evaluate_separation(args.separation, args.reference)
    write_report(report, out)
    print(report.table())
    print(f"report: {out}")
    return 0


def cmd_pareto(args: argparse.Namespace) -> int:
    from studio.checks import check_int
    from studio.evaluation.pareto import DEFAULT_LAMBDAS, DEFAULT_SCALES, pareto_eval
    from studio.generation import DEFAULT_MODEL

    if args.folder is not None or args.out is None:
        raise ValueError("--pareto writes a new folder: give --out DIR and no samples FOLDER")
    students = {}
    for item in args.student:
        label, sep, model = item.partition("=")
        if not sep or not label or not model:
            raise ValueError(f"--student {item!r} must be LABEL=MODEL, e.g. --student 'beta 0.5'=runs/d/model")
        students[label] = model
    modality = modality_of(args.pareto)
    check_sampling_flags(args)
    check_int("-n", args.n, 1, 64)
    model = args.model or DEFAULT_MODEL[modality]
    check_model_and_world(model, modality, None)
    report = pareto_eval(
        model,
        modality,
        out=args.out,
        students=students,
        quality=args.quality,
        diversity=args.diversity,
        scales=tuple(args.guidance or DEFAULT_SCALES),
        lambdas=tuple(args.lambdas or DEFAULT_LAMBDAS),
        per_prompt=args.n,
        steps=args.steps,
        progress=not args.quiet,
        compile=args.compile,
        force=args.force,
        attention=args.attention,
    )
    print(report.table())
    print(f"wrote {args.out}/pareto.md, pareto.json, pareto.png and one folder per point")
    return 0
