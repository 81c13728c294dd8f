"""The `grace` command. Each subcommand lives in a module of this package and registers
itself with `register(subparsers)`; adding a command is one module and one line in
`COMMANDS`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from services.cli import control, credentials, token, up, verify

# Each entry adds one or more subcommands to the `grace` parser.
COMMANDS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (
    up.register,
    control.register,
    verify.register,
    token.register,
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
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in verify.DELEGATED:
        return verify.DELEGATED[arguments[0]](arguments[1:])
    args = build_parser().parse_args(arguments)
    if getattr(args, "connects", False):
        # Commands that call Grace use the credential of its data dir.
        credentials.configure(getattr(args, "data_dir", None))
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)
