"""The ``mixstudio`` command line: a thin layer over the public API.

Each subcommand is one entry of :data:`COMMANDS` (its parser and its function, in ``sample.py``, ``evaluate.py``,
``models.py`` and ``adapter.py``). A subcommand checks what the user typed first (``common.py``,
``studio/checks.py``), before any work; a library ``ValueError`` becomes a one-line ``error: ...`` and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from studio.cli import adapter, evaluate, models, sample, separate

logger = logging.getLogger("studio")


@dataclass
class Command:
    """A subcommand: ``add(subparsers)`` declares its arguments, ``run(args)`` does it and returns the exit code."""

    add: Callable[[argparse._SubParsersAction], None]
    run: Callable[[argparse.Namespace], int]


#: The one place a subcommand name maps to its parser and its function.
COMMANDS: dict[str, Command] = {
    "world": Command(sample.add_world, sample.cmd_world),
    "generate": Command(sample.add_generate, sample.cmd_generate),
    "eval": Command(evaluate.add_eval, evaluate.cmd_eval),
    "sweep": Command(sample.add_sweep, sample.cmd_sweep),
    "separate": Command(separate.add_separate, separate.cmd_separate),
    "train": Command(models.add_train, models.cmd_train),
    "merge": Command(models.add_merge, models.cmd_merge),
    "serve": Command(models.add_serve, models.cmd_serve),
    "adapter": Command(adapter.add_adapter_command, adapter.cmd_adapter),
}


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``error: ...``, exit code 2), like every other error of the CLI."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog.removeprefix('mixstudio ') or 'mixstudio'}: {message}; see --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mixstudio", description="Finetuning studio for diffusion and music models.")
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
    for command in COMMANDS.values():
        command.add(sub)
    return parser


#: Environment variables ``main`` may set; a caller that runs several commands in one process gets them back.
_ENVIRONMENT = ("TQDM_DISABLE", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mixstudio``; returns the process exit code."""
    from studio.threads import prefer_passive_waits, set_threads

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a malformed command line (2), already printed
        return stop.code if isinstance(stop.code, int) else 2
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    before = {name: os.environ.get(name) for name in _ENVIRONMENT}
    torch_threads = sys.modules["torch"].get_num_threads() if "torch" in sys.modules else None
    if args.quiet:
        os.environ["TQDM_DISABLE"] = "1"
    try:
        prefer_passive_waits()  # before torch is imported: idle threads sleep instead of spinning
        if args.threads is not None or "OMP_NUM_THREADS" not in os.environ:
            set_threads(args.threads)
        return COMMANDS[args.command].run(args)
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
