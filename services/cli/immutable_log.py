"""`grace log checkpoint|verify` ask the immutable log; `grace log verify-inclusion` and
`grace log verify-consistency` check its proofs offline (see
`services.kernels.immutable_log.cli`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import grpc

from grace.kernels.immutable_log.v1 import immutable_log_pb2 as pb
from grace.kernels.immutable_log.v1 import immutable_log_pb2_grpc as pb_grpc
from services.cli.output import Column, path, to_data
from services.cli.session import CALL_TIMEOUT_S, Exit, common_options, session
from services.kernels.immutable_log import cli as offline

_PASS_THROUGH = {
    "ignore_unknown_options": True,
    "allow_extra_args": True,
    "help_option_names": [],
}


def register(cli: click.Group) -> None:
    """Adds `grace log`."""
    cli.add_command(log)


@click.group()
def log() -> None:
    """The immutable log: signed checkpoints and integrity checks."""


def _stub(chan: grpc.aio.Channel) -> pb_grpc.ImmutableLogServiceAsyncStub:
    return pb_grpc.ImmutableLogServiceStub(chan)


@log.command()
@click.option(
    "--size", type=click.IntRange(0), default=0, help="Checkpoint of this tree size (0: latest)."
)
@click.option(
    "--save",
    type=click.Path(dir_okay=False, writable=True),
    help="Also write the signed checkpoint note to this file (for verify-consistency --old).",
)
@click.option(
    "--save-key",
    type=click.Path(dir_okay=False, writable=True),
    help="Also write the log's verifier key to this file (for verify-* --key).",
)
@common_options
def checkpoint(size: int, save: str | None, save_key: str | None) -> None:
    """Show the log's signed checkpoint: its size, root hash and verifier key."""
    s = session()

    async def ask(chan: grpc.aio.Channel) -> pb.GetCheckpointResponse:
        return await _stub(chan).GetCheckpoint(
            pb.GetCheckpointRequest(tree_size=size), timeout=CALL_TIMEOUT_S
        )

    found = s.call("immutable_log", ask)
    if save:
        Path(save).write_text(found.checkpoint)
    if save_key:
        Path(save_key).write_text(found.verifier_key + "\n")
    data = to_data(found)
    data["root_hash_hex"] = found.root_hash.hex()
    s.printer.record(
        data,
        [
            Column("ORIGIN", path("origin")),
            Column("TREE SIZE", path("tree_size")),
            Column("ROOT HASH", path("root_hash_hex")),
            Column("VERIFIER KEY", path("verifier_key")),
        ],
    )


@log.command()
@common_options
def verify() -> None:
    """Have the log recompute every entry's hash and its root; exit 1 when they disagree."""
    s = session()

    async def ask(chan: grpc.aio.Channel) -> pb.VerifyIntegrityResponse:
        return await _stub(chan).VerifyIntegrity(
            pb.VerifyIntegrityRequest(), timeout=max(CALL_TIMEOUT_S, 300)
        )

    found = s.call("immutable_log", ask, waiting="recomputing every entry of the log")
    data = to_data(found)
    data["root_hash_hex"] = found.root_hash.hex()
    if s.printer.is_table:
        if found.valid:
            s.printer.line(f"OK: {found.checked} entries verified (root {data['root_hash_hex']})")
        else:
            s.printer.line(f"INVALID at entry {found.first_bad_index}: {found.reason}")
    else:
        s.printer.data(data)
    if not found.valid:
        raise click.exceptions.Exit(int(Exit.NOT_OK))


@log.command("verify-inclusion", context_settings=_PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def verify_inclusion(args: tuple[str, ...]) -> None:
    """Offline: an entry is in a signed tree (--key K --proof FILE [--checkpoint FILE])."""
    sys.exit(offline.main(["verify-inclusion", *args]))


@log.command("verify-consistency", context_settings=_PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def verify_consistency(args: tuple[str, ...]) -> None:
    """Offline: an old tree is a prefix of a new one (--key K --proof FILE [--old F --new F])."""
    sys.exit(offline.main(["verify-consistency", *args]))
