"""`grace verify-proof`: checks a workflow execution proof offline, with a public key only.

The check lives with the orchestrator (`services.orchestrator.proof`), whose entry point
owns the flags and `--help`; this command hands it its arguments untouched.
"""

from __future__ import annotations

import sys

import click

from services.orchestrator import proof


def register(cli: click.Group) -> None:
    """Adds `grace verify-proof`."""
    cli.add_command(verify_proof)


@click.command(
    "verify-proof",
    context_settings={
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "help_option_names": [],
    },
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def verify_proof(args: tuple[str, ...]) -> None:
    """Verify a workflow execution proof offline (FILE [--public-key K]); exit 1 if invalid."""
    sys.exit(proof.main(list(args)))
