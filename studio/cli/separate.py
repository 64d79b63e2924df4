"""``mixstudio separate``: split music files into stems with a trained separator."""

from __future__ import annotations

import argparse
from pathlib import Path

from studio.cli.common import MAX_STEPS, add_out
from studio.cli.stems import add_sampler_flags, check_sampler_flags

LIKELIHOODS = ("dirac", "gaussian")


def add_separate(sub: argparse._SubParsersAction) -> None:
    sep = sub.add_parser("separate", help="split audio files into stems (drums, bass, lead) with a separator")
    sep.add_argument("inputs", type=Path, nargs="+", help="WAV or FLAC files: any rate, channel count and length")
    sep.add_argument(
        "--model",
        default="synth-sep",
        help="an embedded separator (synth-sep) or a separator folder (default: synth-sep)",
    )
    sep.add_argument("--stems", default=None, help="keep only these stems, comma separated (e.g. drums,bass)")
    sep.add_argument("--two-stems", default=None, metavar="STEM", help="write STEM and no_STEM (the rest), as demucs")
    sep.add_argument("--segment", type=float, default=None, help="chunk length in seconds (default: the model's)")
    sep.add_argument("--overlap", type=float, default=0.25, help="fraction of a chunk shared with the next (0.25)")
    sep.add_argument("--format", choices=("wav", "flac", "wav32"), default="wav", help="stem files (wav: 16-bit)")
    sep.add_argument(
        "--likelihood",
        choices=LIKELIHOODS,
        default=None,
        help="multi-source diffusion models only: dirac (the sources sum to the mixture exactly; default) or "
        "gaussian (the baseline)",
    )
    sep.add_argument(
        "--steps", type=int, default=None, help="multi-source diffusion models only: sampler steps (default 50)"
    )
    add_sampler_flags(sep, "multi-source diffusion models only: ")
    add_out(sep, "output folder: one sub-folder of stems per input, and separation.json (replaced atomically)")


def load_model(name: str):
    """The ``--model`` separator: an embedded one by name, or a separator folder."""
    from studio.separation import open_separator

    try:
        return open_separator(name)
    except ValueError as err:
        raise ValueError(f"--model: {err}") from None


def cmd_separate(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from studio.checks import check_int
    from studio.io import atomic_dir, check_output_dir
    from studio.separation.files import (
        check_segment,
        input_names,
        read_info,
        separate_file,
        stem_plan,
        write_separation_manifest,
    )

    check_segment(args.segment, args.overlap)
    check_sampler_flags(args)
    if args.steps is not None:
        check_int("--steps", args.steps, 1, MAX_STEPS)
    for path in args.inputs:
        read_info(path)  # every input readable before any work
    check_output_dir(args.out, force=args.force)
    model = load_model(args.model)
    diffusion = diffusion_settings(model, args)
    stems = None if args.stems is None else [s.strip() for s in args.stems.split(",") if s.strip()]
    plan = stem_plan(model.sources, stems, args.two_stems)
    names = input_names(args.inputs)
    results = []
    with atomic_dir(args.out, force=args.force) as tmp:
        for path, name in zip(args.inputs, names, strict=True):
            (tmp / name).mkdir()
            with tqdm(total=100, desc=f"separate {path.name}", unit="%", disable=args.quiet) as bar:

                def report(fraction: float, bar=bar) -> None:
                    bar.update(round(100 * fraction) - bar.n)

                done = separate_file(
                    model, path, tmp / name, plan=plan, segment=args.segment, overlap=args.overlap,
                    file_format=args.format, progress=report,
                )  # fmt: skip
            done.stems = {stem: f"{name}/{file}" for stem, file in done.stems.items()}
            results.append(done)
        settings = {"segment": args.segment, "overlap": args.overlap, "format": args.format, "plan": plan, **diffusion}
        write_separation_manifest(tmp, args.model, results, settings)
    print(f"wrote {len(results)} x {len(plan)} stems ({', '.join(plan)}) and separation.json to {args.out}")
    return 0


def diffusion_settings(model, args: argparse.Namespace) -> dict:
    """Apply ``--likelihood``, ``--steps``, ``--churn`` and ``--resamples`` to a multi-source diffusion model (its
    separation options, for the manifest); refuse them for any other separator."""
    from studio.separation import MultiSourceDiffusion

    flags = {"likelihood": args.likelihood, "steps": args.steps, "churn": args.churn, "resamples": args.resamples}
    given = {name: value for name, value in flags.items() if value is not None}
    if not isinstance(model, MultiSourceDiffusion):
        if given:
            names = ", ".join(f"--{name}" for name in given)
            raise ValueError(f"{names} apply to multi-source diffusion models; --model {args.model!r} is a "
                             f"{type(model).__name__}: drop them")  # fmt: skip
        return {}
    options = model.configure_separation(**given)
    return {"likelihood": options.likelihood, "steps": options.steps, "churn": options.churn,
            "resamples": options.resamples, "heun": options.heun, "seed": options.seed}  # fmt: skip
