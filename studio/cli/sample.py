"""``mixstudio world``, ``generate`` and ``sweep``: folders of samples, and the guidance sweep over them."""

from __future__ import annotations

import argparse
from pathlib import Path

from studio.cli.common import (
    COMPILE_HELP,
    MAX_ADAPTER_SCALE,
    MAX_PROMPT_CHARS,
    MAX_SAMPLES,
    add_out,
    add_sampler,
    check_model_and_world,
    check_sampling_flags,
    modality_of,
)
from studio.cli.stems import add_stems_flags, cmd_generate_stems, refuse_stems_flags


def add_world(sub: argparse._SubParsersAction) -> None:
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
    world.add_argument(
        "--subject",
        default=None,
        metavar="NAME",
        help="shapes only: render one subject of the MoA family (e.g. heart-stripes-red-yellow, drop-solid-blue) in "
        "--n contexts, with masks/ and reference/reference.png; `held-out:K` picks the K-th held-out subject",
    )
    add_out(world, "output folder (replaced atomically)")


def cmd_world(args: argparse.Namespace) -> int:
    from studio.checks import check_seed
    from studio.io import check_output_dir
    from studio.worlds import get_world
    from studio.worlds.export import draw_samples, export_samples

    world = get_world(args.name)
    check_seed("--seed", args.seed)
    check_output_dir(args.out, force=args.force)
    if args.concept or args.subject is not None:
        if args.name != "shapes" or args.per_prompt is not None or (args.concept and args.subject is not None):
            raise ValueError(
                "--concept renders a shapes concept and --subject a shapes subject: `mixstudio world shapes "
                "--concept` or `mixstudio world shapes --subject NAME` (one of them, no --per-prompt)"
            )
        return write_concept(args) if args.concept else write_subject(args)
    samples = draw_samples(world, args.n, args.seed, args.per_prompt)
    meta = {"source": "world", "seed": args.seed, "per_prompt": args.per_prompt}
    out = export_samples(world, samples, args.out, meta, force=args.force)
    print(f"wrote {len(samples)} {world.name} samples, grid.png and manifest.json to {out}")
    return 0


def write_concept(args: argparse.Namespace) -> int:
    from studio.worlds.concept import write_concept as write_images

    files = write_images(args.out, args.n, args.seed, force=args.force)
    print(
        f"wrote {len(files)} concept images to {args.out}; teach them with "
        f"`mixstudio train finetune --set data.dir={args.out}`"
    )
    return 0


def write_subject(args: argparse.Namespace) -> int:
    from studio.worlds.concept import subject_by_name, write_subject_folder

    subject = subject_by_name(args.subject)
    files = write_subject_folder(args.out, subject, args.n, args.seed, force=args.force)
    print(
        f"wrote {len(files)} images of {subject.name} (masks/ beside them, reference/reference.png) to {args.out}; "
        f"personalise with `mixstudio train moa-shapes --set mode=subject --set data.dir={args.out}` or use the "
        f'reference with `mixstudio generate image "a sks shape" --moa RUN '
        f"--subject {args.out}/reference/reference.png`"
    )
    return 0


def add_generate(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser("generate", help="generate images, music, or music stems into a folder with a manifest")
    gen.add_argument(
        "modality", choices=("image", "music", "stems"), help="stems: a multi-source diffusion model's stems and mix"
    )
    gen.add_argument("prompt", nargs="?", default=None, help="text prompt (omit with --prompt-set eval)")
    gen.add_argument("-n", type=int, default=1, help="samples per prompt")
    gen.add_argument(
        "--prompt-set",
        choices=("eval",),
        default=None,
        help="use the world's held-out evaluation prompts instead of PROMPT",
    )
    gen.add_argument(
        "--model",
        default=None,
        help="embedded name (shapes, synth), a pipeline folder, or a hub id; for stems a multi-source diffusion "
        "model folder (`mixstudio train msdm-synth`)",
    )
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--guidance", type=float, default=None, help="CFG scale (1 = none; default 2 images, 4 music)")
    add_sampler(gen)
    gen.add_argument("--length", type=float, default=None, help="music clip length in seconds")
    gen.add_argument("--world", default=None, help="world whose judges score the output (default: the model's)")
    gen.add_argument(
        "--adapter",
        type=Path,
        action="append",
        default=[],
        help="adapter to apply (repeatable): RUN_DIR/adapter.safetensors, or a PEFT/diffusers folder or a diffusers, "
        "kohya/A1111, LyCORIS or dense .safetensors file (see `mixstudio adapter`)",
    )
    gen.add_argument(
        "--adapter-scale",
        type=float,
        action="append",
        default=[],
        help="adapter strength (1 = as trained): one for every --adapter, or one per --adapter in order",
    )
    gen.add_argument(
        "--moa",
        type=Path,
        default=None,
        metavar="RUN",
        help="images: a mixture-of-attention run (`mixstudio train moa-shapes`); mark the subject in the prompt "
        'with sks before its class word, e.g. "a sks shape on a navy background"',
    )
    gen.add_argument("--subject", type=Path, default=None, help="with --moa: the subject's reference image (PNG)")
    gen.add_argument(
        "--moa-strength",
        type=float,
        default=1.0,
        help="with --moa: personalised branch strength (0 = base, 1 = as trained)",
    )
    add_stems_flags(gen)
    add_out(gen, "output folder (replaced atomically)")


def cmd_generate(args: argparse.Namespace) -> int:
    from studio.checks import check_number, check_text
    from studio.generation import DEFAULT_MODEL, eval_prompt_texts, generate, progress_bar, write_samples
    from studio.io import check_output_dir
    from studio.pipelines import load_pipeline

    if args.modality == "stems":
        return cmd_generate_stems(args)
    refuse_stems_flags(args)
    modality = modality_of(args.modality)
    check_sampling_flags(args)
    if args.length is not None:
        check_number("--length", args.length, 0.001, 600)
    adapters = adapter_flags(args.adapter, args.adapter_scale)
    if args.negative_prompt is not None and len(args.negative_prompt) > MAX_PROMPT_CHARS:
        raise ValueError(
            f"--negative-prompt has {len(args.negative_prompt)} characters; the limit is {MAX_PROMPT_CHARS}"
        )
    check_output_dir(args.out, force=args.force)
    model = args.model or DEFAULT_MODEL[modality]
    world = check_model_and_world(model, modality, args.world)
    if args.prompt_set == "eval":
        if args.prompt is not None:
            raise ValueError("give either PROMPT or --prompt-set eval, not both")
        prompts = eval_prompt_texts(world)
    else:
        prompts = [check_text("prompt", args.prompt or "", MAX_PROMPT_CHARS, example="a red circle")]
    total = len(prompts) * args.n
    if not 1 <= total <= MAX_SAMPLES:
        raise ValueError(f"-n gives {total} samples; allowed 1 to {MAX_SAMPLES}")
    moa = check_moa_flags(args, modality)
    pipe = load_pipeline(model, modality, scheduler=args.scheduler)
    if args.length is not None and (error := pipe.length_error(args.length)) is not None:
        raise ValueError(f"--length {error}")
    if moa is not None:
        moa = moa_for(moa, pipe, args.subject)
    with progress_bar(f"generate {args.modality}", not args.quiet) as bar:
        samples = generate(
            pipe,
            prompts,
            modality=modality,
            num_per_prompt=args.n,
            negative_prompt=args.negative_prompt,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            guidance_rescale=args.guidance_rescale,
            guidance_interval=tuple(args.guidance_interval),
            seed=args.seed,
            audio_length_in_s=args.length,
            adapters=adapters,
            progress=bar,
            attention=args.attention,
            name=model,
            base_model_id=model,
            moa=moa,
            subject=args.subject,
            moa_strength=args.moa_strength,
        )
    samples.settings["scheduler"] = args.scheduler or "saved"
    if moa is not None:
        samples.settings["moa"] = str(args.moa)
    write_samples(samples, args.out, world=world, force=args.force)
    print(f"wrote {len(samples)} {args.modality} samples, grid.png and manifest.json to {args.out}")
    return 0


def add_sweep(sub: argparse._SubParsersAction) -> None:
    sweep = sub.add_parser("sweep", help="generate on the held-out prompts at several guidance scales and score")
    sweep.add_argument("modality", choices=("image", "music"))
    sweep.add_argument("--model", default=None, help="embedded name (shapes, synth), a pipeline folder, or a hub id")
    sweep.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 4.0, 6.0], help="guidance scales")
    sweep.add_argument("-n", type=int, default=4, help="samples per prompt (>= 2)")
    add_sampler(sweep)
    sweep.add_argument("--world", default=None, help="world whose prompts and judges are used (default: the model's)")
    sweep.add_argument("--judge", choices=("eval", "reward"), default="eval", help="which judge scores")
    add_out(sweep, "output folder (replaced atomically)")
    sweep.add_argument("--compile", action="store_true", help=COMPILE_HELP)


def cmd_sweep(args: argparse.Namespace) -> int:
    from studio.checks import check_int
    from studio.evaluation import guidance_sweep
    from studio.generation import DEFAULT_MODEL

    modality = modality_of(args.modality)
    check_sampling_flags(args)
    check_int("-n", args.n, 1, 64)  # one sample per prompt is refused below: diversity needs pairs
    model = args.model or DEFAULT_MODEL[modality]
    world = check_model_and_world(model, modality, args.world)
    report = guidance_sweep(
        model,
        modality,
        args.guidance,
        out=args.out,
        per_prompt=args.n,
        steps=args.steps,
        seed=args.seed,
        scheduler=args.scheduler,
        guidance_rescale=args.guidance_rescale,
        guidance_interval=tuple(args.guidance_interval),
        world=world,
        judge=args.judge,
        progress=not args.quiet,
        compile=args.compile,
        force=args.force,
        attention=args.attention,
    )
    print(report.table())
    print(f"wrote {args.out}/sweep.md, sweep.json, sweep.png and one folder per guidance scale")
    return 0


def check_moa_flags(args: argparse.Namespace, modality: str) -> Path | None:
    """``--moa`` (checked: an image model, a readable MoA file), or None; refuses MoA flags without ``--moa``."""
    from studio.attention.moa import resolve_file
    from studio.checks import check_number

    if args.moa is None:
        if args.subject is not None or args.moa_strength != 1.0:
            raise ValueError("--subject and --moa-strength go with --moa RUN (a mixture-of-attention run)")
        return None
    if modality != "image":
        raise ValueError("--moa personalises image models; generate image ... --moa RUN")
    check_number("--moa-strength", args.moa_strength, 0, 10)
    resolve_file(args.moa)
    if args.subject is not None and not args.subject.is_file():
        raise ValueError(f"--subject {str(args.subject)!r} is not a file; pass the subject's reference PNG")
    return args.moa


def moa_for(path: Path, pipe, subject: Path | None):
    """The MoA at ``path`` checked against ``pipe``'s UNet, and that ``--subject`` is there when it needs one."""
    from studio.attention.moa import MoA

    moa = MoA.load(path, pipe.unet)
    if moa.settings.mode == "encoder" and subject is None:
        raise ValueError(f"--moa {str(path)!r} takes its subject from a reference image: add --subject REF.png")
    if moa.settings.mode == "subject" and subject is not None:
        raise ValueError(f"--moa {str(path)!r} was trained on one subject; drop --subject (it has its own)")
    return moa


def adapter_flags(paths: list[Path], scales: list[float]) -> list[tuple[Path, float]]:
    """``(adapter, strength)`` pairs from repeated ``--adapter`` and ``--adapter-scale`` flags, checked.

    Raises:
        ValueError: for a path that is neither a file nor a folder, a strength out of range, or a count of
            strengths that is neither one nor one per adapter.
    """
    from studio.adapters import detect_format
    from studio.checks import check_number

    for path in paths:
        if not path.is_file() and not path.is_dir():
            raise ValueError(
                f"--adapter {str(path)!r} is not a file or an adapter folder; pass RUN_DIR/adapter.safetensors"
            )
        detect_format(path)  # an unreadable file or one of no known format fails now, before the model loads
    for scale in scales:
        check_number("--adapter-scale", scale, -MAX_ADAPTER_SCALE, MAX_ADAPTER_SCALE)
    if len(scales) > 1 and len(scales) != len(paths):
        raise ValueError(f"got {len(scales)} --adapter-scale values for {len(paths)} --adapter; give one or one each")
    strengths = scales if len(scales) > 1 else [scales[0] if scales else 1.0] * len(paths)
    return list(zip(paths, strengths, strict=True))
