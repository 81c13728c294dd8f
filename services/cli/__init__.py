"""The `grace` command. Each subcommand lives in a module of this package and registers
itself with `register(subparsers)`; adding a command is one module and one line in
`COMMANDS`."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from services.cli import control, up

# Each entry adds one or more subcommands to the `grace` parser.
COMMANDS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (
    up.register,
    control.register,
)


def build_parser() -> argparse.ArgumentParser:
    """The `grace` parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="grace", description="Run and operate a Grace system.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `grace` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)
