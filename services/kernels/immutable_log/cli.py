"""`grace log verify-inclusion` and `grace log verify-consistency`: offline proof checks.

Both take the log's public key only (never a connection to the log) and the JSON a
GetInclusionProof / GetConsistencyProof call returned (grpcurl or the gateway; either JSON
field naming works). The key is the verifier key string GetCheckpoint returns
(`<name>+<hex id>+<base64>`), a file holding it, or the PEM public key file the log
writes next to its key (then `--name` defaults to the checkpoint's origin).

Exit status: 0 verified, 1 not verified, 2 bad usage or unreadable input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from google.protobuf import json_format
from google.protobuf.message import Message

from grace.kernels.immutable_log.v1 import immutable_log_pb2 as pb
from services.common import dsse
from services.kernels.immutable_log.audit import AuditError, check_consistency, check_inclusion
from services.kernels.immutable_log.checkpoint import CheckpointError, parse_verifier_key


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grace log", description="Check log proofs offline.")
    sub = parser.add_subparsers(dest="command", required=True)
    inclusion = sub.add_parser("verify-inclusion", help="an entry is in a signed tree")
    inclusion.add_argument("--key", required=True, help="verifier key, or a file with it / PEM")
    inclusion.add_argument("--name", default="", help="key name for a PEM key (default: origin)")
    inclusion.add_argument("--proof", required=True, help="GetInclusionProof response JSON file")
    inclusion.add_argument("--checkpoint", help="a signed checkpoint file to check against")
    consistency = sub.add_parser("verify-consistency", help="an old tree is a prefix of a new")
    consistency.add_argument("--key", required=True, help="verifier key, or a file with it / PEM")
    consistency.add_argument("--name", default="", help="key name for a PEM key")
    consistency.add_argument("--proof", required=True, help="GetConsistencyProof response JSON")
    consistency.add_argument("--old", help="the older signed checkpoint you kept")
    consistency.add_argument("--new", help="the newer signed checkpoint")
    return parser


def _read(path: str | None) -> str:
    return Path(path).read_text() if path else ""


def _key(text: str, name: str, note: str) -> tuple[str, bytes]:
    path = Path(text)
    raw = path.read_bytes() if path.is_file() else text.encode()
    if b"BEGIN PUBLIC KEY" in raw:
        public = dsse.raw_public_key(dsse.load_public_key(raw))
        return name or note.split("\n", 1)[0], public
    return parse_verifier_key(raw.decode())


def _load(path: str, message: Message) -> None:
    json_format.Parse(Path(path).read_text(), message, ignore_unknown_fields=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one check; prints the verdict. See the module docstring for exit codes."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "verify-inclusion":
            inclusion = pb.GetInclusionProofResponse()
            _load(args.proof, inclusion)
            note = _read(args.checkpoint) or inclusion.checkpoint
            name, public = _key(args.key, args.name, note)
            head = check_inclusion(inclusion, name, public, note)
            print(
                f"OK: entry {inclusion.leaf_index} is in the log {head.origin!r} "
                f"of size {head.size} (root {head.root_hash.hex()})"
            )
            return 0
        consistency = pb.GetConsistencyProofResponse()
        _load(args.proof, consistency)
        old_note = _read(args.old) or consistency.first_checkpoint
        name, public = _key(args.key, args.name, old_note)
        old, new = check_consistency(
            consistency, name, public, old_note, _read(args.new) or consistency.second_checkpoint
        )
        print(f"OK: the log {old.origin!r} of size {old.size} is a prefix of size {new.size}")
        return 0
    except AuditError as exc:
        print(f"NOT VERIFIED: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError, CheckpointError, json_format.ParseError) as exc:
        print(f"grace log: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
