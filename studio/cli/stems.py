"""``mixstudio generate stems``: stems and their mix from a multi-source diffusion model, or the rest of given stems.

The flags ``--given``, ``--churn`` and ``--resamples`` belong to ``generate stems`` (and ``--churn``/``--resamples`` to
``separate`` with such a model); the image and music flags that do not apply to it are refused in one line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from studio.cli.common import MAX_GUIDANCE, MAX_PROMPT_CHARS, MAX_STEPS

#: Limits of the sampler flags (``--churn``: EDM's S_churn; ``--resamples``: repeats of each step).
MAX_CHURN = 1000.0
MAX_RESAMPLES = 10
#: ``generate`` flags that a multi-source diffusion model does not read, with their defaults.
NOT_FOR_STEMS = {
    "negative_prompt": ("--negative-prompt", None),
    "scheduler": ("--scheduler", None),
    "guidance_rescale": ("--guidance-rescale", 0.0),
    "guidance_interval": ("--guidance-interval", (0.0, 1.0)),
    "adapter": ("--adapter", []),
    "adapter_scale": ("--adapter-scale", []),
    "attention": ("--attention", None),
}


def add_stems_flags(parser: argparse.ArgumentParser) -> None:
    """``--given STEM=FILE`` (repeatable), ``--churn`` and ``--resamples`` of ``generate stems``."""
    parser.add_argument(
        "--given",
        action="append",
        default=[],
        metavar="STEM=FILE",
        help="stems only: accompany this stem (a mono WAV at the model's rate), e.g. drums=beat.wav; repeatable",
    )
    add_sampler_flags(parser, "stems only: ")


def add_sampler_flags(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--churn`` and ``--resamples`` (a multi-source diffusion model's sampler)."""
    parser.add_argument("--churn", type=float, default=None, help=f"{prefix}S_churn of the sampler (default 20)")
    parser.add_argument(
        "--resamples", type=int, default=None, help=f"{prefix}times each sampler step is taken (default 1)"
    )


def check_sampler_flags(args: argparse.Namespace) -> None:
    """``--churn`` and ``--resamples``, when given, in range (in the user's words)."""
    from studio.checks import check_int, check_number

    if args.churn is not None:
        check_number("--churn", args.churn, 0, MAX_CHURN, meaning=" (0 = the deterministic ODE)")
    if args.resamples is not None:
        check_int("--resamples", args.resamples, 1, MAX_RESAMPLES)


def refuse_stems_flags(args: argparse.Namespace) -> None:
    """For ``generate image|music``: refuse the flags only ``generate stems`` reads."""
    used = [flag for flag, value in (("--given", args.given), ("--churn", args.churn), ("--resamples", args.resamples))
            if value not in (None, [])]  # fmt: skip
    if used:
        raise ValueError(f"{', '.join(used)} apply to `generate stems` only; drop them for {args.modality}")


def load_msdm(name: str):
    """The ``--model`` folder as a multi-source diffusion model.

    Raises:
        ValueError: for a folder that is not a separator, or a separator of another family.
    """
    from studio.separation import MultiSourceDiffusion, open_separator

    try:
        model = open_separator(name)
    except ValueError as err:
        raise ValueError(f"--model: {err}") from None
    if not isinstance(model, MultiSourceDiffusion):
        raise ValueError(
            f"--model {name!r} is a {type(model).__name__} separator, not a multi-source diffusion model; train one "
            "with `mixstudio train msdm-synth`"
        )
    return model


def read_given(pairs: list[str], sources: list[str], sample_rate: int) -> dict:
    """``--given STEM=FILE`` flags as ``{stem: waveform}`` (mono files at ``sample_rate``, stems of ``sources``)."""
    from studio.io import read_wav

    given = {}
    for pair in pairs:
        stem, sep, file = pair.partition("=")
        if not sep or not stem or not file:
            raise ValueError(f"--given {pair!r} must be STEM=FILE, e.g. drums=beat.wav")
        if stem not in sources:
            raise ValueError(f"--given stem {stem!r} is not one this model generates; pick from {sources}")
        if stem in given:
            raise ValueError(f"--given names stem {stem!r} twice; give each stem once")
        given[stem] = read_wav(Path(file), sample_rate)
    if given and len(given) == len(sources):
        raise ValueError(f"--given gives every stem ({', '.join(sources)}); leave at least one to generate")
    return given


def cmd_generate_stems(args: argparse.Namespace) -> int:
    from studio.checks import check_choice, check_int, check_number, check_seed, check_text
    from studio.generation import eval_prompt_texts, progress_bar, seeds_for
    from studio.io import check_output_dir
    from studio.pipelines.stems import DEFAULT_CHURN, MAX_SAMPLES, generate_stems, write_stems

    for attr, (flag, default) in NOT_FOR_STEMS.items():
        if getattr(args, attr, default) != default:
            raise ValueError(f"{flag} does not apply to `generate stems` (its model samples on its own); drop it")
    check_int("--steps", args.steps, 1, MAX_STEPS)
    check_seed("--seed", args.seed)
    check_sampler_flags(args)
    guidance = 1.0 if args.guidance is None else check_number("--guidance", args.guidance, 0, MAX_GUIDANCE)
    if args.length is not None:
        check_number("--length", args.length, 0.01, 60)
    world = check_choice("--world", args.world or "synth", ["synth"])  # the one world with stems
    if args.prompt_set == "eval":
        if args.prompt is not None:
            raise ValueError("give either PROMPT or --prompt-set eval, not both")
        prompts = eval_prompt_texts(world)
    else:
        example = "a fast minor tune with a rock beat"
        text = None if args.prompt is None else check_text("prompt", args.prompt, MAX_PROMPT_CHARS, example=example)
        prompts = [text]
    if not 1 <= len(prompts) * args.n <= MAX_SAMPLES:
        raise ValueError(f"-n gives {len(prompts) * args.n} samples; allowed 1 to {MAX_SAMPLES}")
    if args.model is None:
        raise ValueError("--model is required for stems: a folder made by `mixstudio train msdm-synth`")
    check_output_dir(args.out, force=args.force)
    model = load_msdm(args.model)
    given = read_given(args.given, model.sources, model.sample_rate)
    length = None if args.length is None else round(args.length * model.sample_rate)
    settings = {"steps": args.steps, "churn": DEFAULT_CHURN if args.churn is None else args.churn,
                "resamples": args.resamples or 1, "guidance_scale": guidance, "seed": args.seed}  # fmt: skip
    with progress_bar("generate stems", not args.quiet) as bar:
        stems = generate_stems(model, prompts, args.n, given=given, length_samples=length, progress=bar, **settings)
    meta = {"source": "generate stems", "model": str(args.model), **settings,
            "given": {stem: file for stem, _, file in (p.partition("=") for p in args.given)}}  # fmt: skip
    captions = [p for p in prompts for _ in range(args.n)]
    write_stems(stems, args.out, prompts=captions, seeds=seeds_for(len(prompts), args.n, args.seed),
                sample_rate=model.sample_rate, world=world, meta=meta, force=args.force)  # fmt: skip
    names = ", ".join(model.sources)
    print(f"wrote {len(captions)} mixes, their stems ({names}), grid.png and manifest.json to {args.out}")
    return 0
