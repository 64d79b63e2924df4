"""The ``mixstudio`` command line: a thin layer over the public API.

Library errors (``ValueError``) become a one-line ``error: ...`` message and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

logger = logging.getLogger("studio")


def add_guidance_refinements(parser: argparse.ArgumentParser) -> None:
    """``--guidance-rescale`` and ``--guidance-interval`` (see :class:`studio.guidance.Guidance`)."""
    parser.add_argument(
        "--guidance-rescale",
        type=float,
        default=0.0,
        metavar="PHI",
        help="rescale phi in [0, 1] that tames large guidance (0 = off)",
    )
    parser.add_argument(
        "--guidance-interval",
        type=float,
        nargs=2,
        default=(0.0, 1.0),
        metavar=("LOW", "HIGH"),
        help="guide only at noise levels t/T in [LOW, HIGH]; other steps cost one UNet call (default: 0 1)",
    )


COMPILE_HELP = (
    "compile each model's UNet (torch.compile) before sampling: about a minute per model and batch shape on a CPU, "
    "then ~1.3-1.5x faster sampling (docs/SPEED.md); pays off for long runs"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixstudio", description="Finetuning studio for diffusion and music models.")
    parser.add_argument("--quiet", action="store_true", help="hide progress bars and info logs")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads (default: $OMP_NUM_THREADS if set, else every core this process may use); idle threads "
        "sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE unless set), so a shared machine stays responsive",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    world = sub.add_parser("world", help="render samples of a procedural world into a folder")
    world.add_argument("name", help="world name: shapes or synth")
    world.add_argument("--n", type=int, default=16, help="number of samples")
    world.add_argument("--seed", type=int, default=0, help="base seed of the sample stream")
    world.add_argument(
        "--per-prompt",
        type=int,
        default=None,
        help="draw this many samples per held-out eval prompt (for diversity) instead of random captions",
    )
    world.add_argument(
        "--concept",
        action="store_true",
        help="shapes only: render the personalisation concept (an orange crescent the world never shows) instead",
    )
    world.add_argument("--out", type=Path, required=True, help="output folder (replaced atomically)")

    ev = sub.add_parser(
        "eval",
        help="score a folder of samples described by manifest.json, or (--pareto) CFG against distilled students",
    )
    ev.add_argument("folder", type=Path, nargs="?", default=None, help="samples folder (not with --pareto)")
    ev.add_argument("--judge", choices=("eval", "reward"), default="eval", help="which judge scores")
    ev.add_argument("--reference", type=int, default=256, help="world samples in the Fréchet reference")
    ev.add_argument("--out", type=Path, default=None, help="report path (default: FOLDER/eval.json); --pareto: folder")
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

    gen = sub.add_parser("generate", help="generate images or music into a folder with a manifest")
    gen.add_argument("modality", choices=("image", "music"))
    gen.add_argument("prompt", nargs="?", default=None, help="text prompt (omit with --prompt-set eval)")
    gen.add_argument("-n", type=int, default=1, help="samples per prompt")
    gen.add_argument(
        "--prompt-set",
        choices=("eval",),
        default=None,
        help="use the world's held-out evaluation prompts instead of PROMPT",
    )
    gen.add_argument("--model", default=None, help="embedded name (shapes, synth), a pipeline folder, or a hub id")
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--steps", type=int, default=25, help="sampler steps")
    gen.add_argument("--guidance", type=float, default=None, help="CFG scale (1 = none; default 2 images, 4 music)")
    gen.add_argument("--scheduler", default=None, help="sampler: ddim, dpm++, ddpm, euler (default: the saved one)")
    add_guidance_refinements(gen)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--length", type=float, default=None, help="music clip length in seconds")
    gen.add_argument("--world", default=None, help="world whose judges score the output (default: the model's)")
    gen.add_argument("--adapter", type=Path, default=None, help="adapter file to apply (RUN_DIR/adapter.safetensors)")
    gen.add_argument("--adapter-scale", type=float, default=1.0, help="adapter strength (1 = as trained)")
    gen.add_argument("--out", type=Path, required=True, help="output folder (replaced atomically)")

    sweep = sub.add_parser("sweep", help="generate on the held-out prompts at several guidance scales and score")
    sweep.add_argument("modality", choices=("image", "music"))
    sweep.add_argument("--model", default=None, help="embedded name (shapes, synth), a pipeline folder, or a hub id")
    sweep.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 4.0, 6.0], help="guidance scales")
    sweep.add_argument("-n", type=int, default=4, help="samples per prompt (>= 2)")
    sweep.add_argument("--steps", type=int, default=25, help="sampler steps")
    sweep.add_argument("--scheduler", default=None, help="sampler: ddim, dpm++, ddpm, euler (default: the saved one)")
    add_guidance_refinements(sweep)
    sweep.add_argument("--seed", type=int, default=0)
    sweep.add_argument("--world", default=None, help="world whose prompts and judges are used (default: the model's)")
    sweep.add_argument("--judge", choices=("eval", "reward"), default="eval", help="which judge scores")
    sweep.add_argument("--out", type=Path, required=True, help="output folder (replaced atomically)")
    sweep.add_argument("--compile", action="store_true", help=COMPILE_HELP)

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
    train.add_argument("--out", type=Path, default=None, help="output folder (default: the recipe's)")

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
    merge.add_argument("--out", type=Path, required=True, help="output pipeline folder (replaced atomically)")

    serve = sub.add_parser("serve", help="start the web app (Gradio)")
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 exposes it)")
    serve.add_argument("--port", type=int, default=7860)
    serve.add_argument("--workdir", type=Path, default=Path("studio-app"), help="where the app writes every file")
    serve.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    serve.add_argument(
        "--model", action="append", default=[], type=Path, metavar="PATH", help="also offer this pipeline folder"
    )
    serve.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    return parser


def cmd_world(args: argparse.Namespace) -> int:
    from studio.io import check_output_dir
    from studio.worlds import get_world
    from studio.worlds.export import draw_samples, export_samples

    world = get_world(args.name)
    check_output_dir(args.out)
    if args.concept:
        return write_concept(args)
    samples = draw_samples(world, args.n, args.seed, args.per_prompt)
    meta = {"source": "world", "seed": args.seed, "per_prompt": args.per_prompt}
    out = export_samples(world, samples, args.out, meta)
    print(f"wrote {len(samples)} {world.name} samples, grid.png and manifest.json to {out}")
    return 0


def write_concept(args: argparse.Namespace) -> int:
    from studio.worlds.concept import write_concept as write_images

    if args.name != "shapes" or args.per_prompt is not None:
        raise ValueError("--concept renders a shapes concept: `mixstudio world shapes --concept` (no --per-prompt)")
    files = write_images(args.out, args.n, args.seed)
    print(
        f"wrote {len(files)} concept images to {args.out}; teach them with "
        f"`mixstudio train finetune --set data.dir={args.out}`"
    )
    return 0


#: Limits of what the command line accepts (the library's own limits are wider or none).
MAX_STEPS = 1000
MAX_SAMPLES = 256
MAX_GUIDANCE = 100.0
MAX_ADAPTER_SCALE = 10.0


def check_sampling_flags(args: argparse.Namespace) -> None:
    """Validate the sampler flags that ``generate``, ``sweep`` and ``eval --pareto`` share, in the user's words."""
    from studio.checks import check_choice, check_int, check_interval, check_number, check_seed
    from studio.pipelines import SCHEDULERS

    check_int("--steps", args.steps, 1, MAX_STEPS)
    for w in args.guidance if isinstance(args.guidance, list) else [args.guidance]:
        if w is not None:
            check_number("--guidance", w, 0, MAX_GUIDANCE, meaning=" (1 = no guidance)")
    check_number("--guidance-rescale", getattr(args, "guidance_rescale", 0.0), 0, 1, meaning=" (0 = off)")
    check_interval("--guidance-interval", list(getattr(args, "guidance_interval", (0.0, 1.0))))
    check_seed("--seed", getattr(args, "seed", 0))
    if getattr(args, "scheduler", None) is not None:
        check_choice("--scheduler", args.scheduler, SCHEDULERS)


def cmd_generate(args: argparse.Namespace) -> int:
    from studio.checks import check_number, check_text
    from studio.generation import DEFAULT_MODEL, eval_prompt_texts, generate, model_world, progress_bar, write_samples
    from studio.io import check_output_dir
    from studio.worlds import get_world

    modality = "image" if args.modality == "image" else "audio"
    check_sampling_flags(args)
    if args.length is not None:
        check_number("--length", args.length, 0.001, 600)
    if args.adapter is not None and not args.adapter.is_file():
        raise ValueError(f"--adapter {str(args.adapter)!r} is not a file; pass RUN_DIR/adapter.safetensors")
    check_number("--adapter-scale", args.adapter_scale, -MAX_ADAPTER_SCALE, MAX_ADAPTER_SCALE)
    check_output_dir(args.out)
    model = args.model or DEFAULT_MODEL[modality]
    world = get_world(args.world or model_world(model, modality)).name
    if args.prompt_set == "eval":
        if args.prompt is not None:
            raise ValueError("give either PROMPT or --prompt-set eval, not both")
        prompts = eval_prompt_texts(world)
    else:
        prompts = [check_text("prompt", args.prompt or "", 2000, example="a red circle")]
    total = len(prompts) * args.n
    if not 1 <= total <= MAX_SAMPLES:
        raise ValueError(f"-n gives {total} samples; allowed 1 to {MAX_SAMPLES}")
    with progress_bar(f"generate {args.modality}", not args.quiet) as bar:
        samples = generate(
            model,
            prompts,
            modality=modality,
            num_per_prompt=args.n,
            negative_prompt=args.negative_prompt,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            guidance_rescale=args.guidance_rescale,
            guidance_interval=tuple(args.guidance_interval),
            seed=args.seed,
            scheduler=args.scheduler,
            audio_length_in_s=args.length,
            adapters=[(args.adapter, args.adapter_scale)] if args.adapter is not None else [],
            progress=bar,
        )
    write_samples(samples, args.out, world=world)
    print(f"wrote {len(samples)} {args.modality} samples, grid.png and manifest.json to {args.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from studio.evaluation import evaluate_folder, write_report

    if args.pareto is not None:
        return cmd_pareto(args)
    if args.folder is None:
        raise ValueError("give a samples FOLDER to score, or --pareto image|music with --out DIR")
    out = args.out or args.folder / "eval.json"
    if out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a folder; pass a file path such as report.json")
    report = evaluate_folder(args.folder, role=args.judge, reference_size=args.reference)
    write_report(report, out)
    print(report.table())
    print(f"report: {out}")
    return 0


def cmd_pareto(args: argparse.Namespace) -> int:
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
    modality = "image" if args.pareto == "image" else "audio"
    check_sampling_flags(args)
    report = pareto_eval(
        args.model or DEFAULT_MODEL[modality],
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
    )
    print(report.table())
    print(f"wrote {args.out}/pareto.md, pareto.json, pareto.png and one folder per point")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from studio.evaluation import guidance_sweep
    from studio.generation import DEFAULT_MODEL

    modality = "image" if args.modality == "image" else "audio"
    check_sampling_flags(args)
    report = guidance_sweep(
        args.model or DEFAULT_MODEL[modality],
        modality,
        args.guidance,
        out=args.out,
        per_prompt=args.n,
        steps=args.steps,
        seed=args.seed,
        scheduler=args.scheduler,
        guidance_rescale=args.guidance_rescale,
        guidance_interval=tuple(args.guidance_interval),
        world=args.world,
        judge=args.judge,
        progress=not args.quiet,
        compile=args.compile,
    )
    print(report.table())
    print(f"wrote {args.out}/sweep.md, sweep.json, sweep.png and one folder per guidance scale")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from studio.config import apply_overrides
    from studio.recipes import RECIPES, get_recipe, run_config

    if args.recipe == "list":
        for name, fn in sorted(RECIPES.items()):
            print(f"{name:<24} {(fn.__doc__ or '').strip()}")
        return 0
    config = apply_overrides(get_recipe(args.recipe), args.overrides)
    if args.out is not None:
        config = dataclasses.replace(config, out=args.out)
    command = "mixstudio " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""
    result = run_config(config, command=command)
    if int(os.environ.get("RANK", "0")) == 0:  # one summary for a data-parallel run, from its first process
        print(result)
    return 0


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
        merge_adapter_files(args.models[0], adapters, weights, args.out, modality=modality)
        print(f"wrote {args.models[0]} with adapters {mix} merged in to {args.out}")
    else:
        merge_pipelines(args.models, weights, args.out, modality=modality)
        print(f"wrote merged pipeline ({mix}) to {args.out}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from studio.app import serve

    serve(
        workdir=args.workdir, host=args.host, port=args.port, share=args.share, models=args.model, compile=args.compile
    )
    return 0


COMMANDS = {
    "world": cmd_world,
    "generate": cmd_generate,
    "eval": cmd_eval,
    "sweep": cmd_sweep,
    "train": cmd_train,
    "merge": cmd_merge,
    "serve": cmd_serve,
}


#: Environment variables ``main`` may set; a caller that runs several commands in one process gets them back.
_ENVIRONMENT = ("TQDM_DISABLE", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mixstudio``; returns the process exit code."""
    from studio.threads import prefer_passive_waits, set_threads

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    before = {name: os.environ.get(name) for name in _ENVIRONMENT}
    torch_threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"
    try:
        prefer_passive_waits()  # before torch is imported: idle threads sleep instead of spinning
        if args.threads is not None or "OMP_NUM_THREADS" not in os.environ:
            set_threads(args.threads)
        return COMMANDS[args.command](args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:  # a caller that runs several commands in one process (tests, notebooks) gets its settings back
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if torch_threads is not None:
            sys.modules["torch"].set_num_threads(torch_threads)


if __name__ == "__main__":
    sys.exit(main())
