"""What the subcommands share: the output-folder flags, the sampler flags and their checks, and the limits."""

from __future__ import annotations

import argparse
from pathlib import Path

from studio.checks import check_choice, check_int, check_interval, check_number, check_seed

#: Limits of what the command line accepts (the library's own limits are wider or none).
MAX_STEPS = 1000
MAX_SAMPLES = 256
MAX_GUIDANCE = 100.0
MAX_ADAPTER_SCALE = 10.0
MAX_PROMPT_CHARS = 2000

COMPILE_HELP = (
    "compile each model's UNet (torch.compile) before sampling: about a minute per model and batch shape on a CPU, "
    "then ~1.3-1.5x faster sampling (docs/SPEED.md); pays off for long runs"
)


def add_out(parser: argparse.ArgumentParser, help: str, required: bool = True) -> None:
    """``--out DIR`` (a folder written whole) and ``--force`` (replace a folder mixstudio did not write)."""
    parser.add_argument("--out", type=Path, required=required, default=None, help=help)
    parser.add_argument(
        "--force", action="store_true", help="replace --out even if it holds files mixstudio did not write"
    )


def add_sampler(parser: argparse.ArgumentParser, guidance: argparse.Action | None = None) -> None:
    """``--steps``, ``--scheduler``, ``--guidance-rescale``, ``--guidance-interval`` and ``--seed``."""
    parser.add_argument("--steps", type=int, default=25, help="sampler steps")
    parser.add_argument("--scheduler", default=None, help="sampler: ddim, dpm++, ddpm, euler (default: the saved one)")
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--attention",
        default=None,
        metavar="NAME",
        help="attention backend of the UNet: sdpa, triton, xformers, reference (default: the model's own processors; "
        "a backend that cannot run here says so and falls back to sdpa)",
    )


def check_sampling_flags(args: argparse.Namespace) -> None:
    """Validate the sampler flags that ``generate``, ``sweep`` and ``eval --pareto`` share, in the user's words."""
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
    if getattr(args, "attention", None) is not None:
        from studio.attention import BACKENDS

        check_choice("--attention", args.attention, BACKENDS)


def modality_of(flag: str) -> str:
    """The library's modality for the CLI's word (``music`` is ``audio``)."""
    return "image" if flag == "image" else "audio"


def check_model_and_world(model: str, modality: str, world: str | None) -> str:
    """The world whose judges score ``model``'s samples, after checking that model and world fit ``modality``.

    Raises:
        ValueError: for a model or world of the other modality (naming the command that fits it).
    """
    from studio.generation import model_world
    from studio.pipelines import model_modality
    from studio.worlds import get_world

    word = {"image": "image", "audio": "music"}
    found = model_modality(model)
    if found != modality:
        raise ValueError(f"--model {model!r} is a {word[found]} model; use the {word[found]} command for it")
    name = world or model_world(model, modality)
    if get_world(name).modality != modality:
        raise ValueError(f"--world {name!r} renders {word[get_world(name).modality]}; pick a {word[modality]} world")
    return name
