"""`grace verify-proof` and `grace log verify-*`: offline checks with a public key only.

The checks live with the services that produce what is checked (the orchestrator's
execution proofs, the immutable log's Merkle proofs); these commands hand their whole
argument list to those entry points, which own their flags and `--help`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from services.kernels.immutable_log import cli as log_cli
from services.orchestrator import proof

# Subcommands whose arguments go untouched to another entry point.
DELEGATED: dict[str, Callable[[Sequence[str]], int]] = {
    "verify-proof": proof.main,
    "log": log_cli.main,
}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Lists `grace verify-proof` and `grace log` in `grace --help`."""
    subparsers.add_parser(
        "verify-proof", help="verify a workflow execution proof offline (FILE [--public-key K])"
    )
    subparsers.add_parser(
        "log", help="verify immutable-log proofs offline (verify-inclusion | verify-consistency)"
    )
