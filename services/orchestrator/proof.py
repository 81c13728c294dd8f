"""Hash-chained, signed proofs of executions, and their offline verification.

Each call the orchestrator makes for an execution (an attempt of a step, a compensation)
becomes a record: step, domain, action, kind, attempt, outcome, SHA-256 digests of the
canonical JSON of the input and output, and times. A record's hash is the SHA-256 of its
canonical JSON (every field but `hash`), and it carries the previous record's hash, so
changing, removing or reordering any record breaks the chain. When the execution ends,
the orchestrator signs the chain head with its Ed25519 key.

Canonical JSON: keys sorted, no whitespace, UTF-8 (no escaping of non-ASCII), and
integral floats written as integers (protobuf Struct numbers are doubles: 3.0 -> 3).

`verify_proof` checks a proof's consistency (and the signer, when given a key). A proof
carries its signer's public key, so consistency alone proves nothing about who signed it:
anyone can re-hash an altered chain and sign it with a key of their own. The command
`grace verify-proof FILE` (also `python -m services.orchestrator.proof FILE`, FILE being
the JSON of a GetExecutionProof response or of its `proof`) therefore also requires the
signer to be trusted (`key_trust`): the key pinned with `--public-key`, else the
orchestrator's public key published in the data dir (`--data-dir`, `GRACE_DATA_DIR`,
default `./.grace`: `<data dir>/orchestrator.pub`). With neither, it refuses the proof. It
prints which key it checked.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from grace.orchestrator.v1 import orchestrator_pb2
from services.common import signing
from services.common.components import component_key_path
from services.common.config import DEFAULT_DATA_DIR
from services.common.pki import Identity, PkiError, check_attestation

PROOF_VERSION = "grace.orchestrator.proof.v1"
RECORD_FIELDS = (
    "index",
    "execution_id",
    "step_id",
    "domain_id",
    "action",
    "kind",
    "attempt",
    "outcome",
    "input_sha256",
    "output_sha256",
    "error",
    "started_at_us",
    "finished_at_us",
    "prev_hash",
)
_MAX_SAFE_INT = 2**53
ORCHESTRATOR_IDENTITY = Identity("component", "orchestrator")


def _normalize(value: Any) -> Any:
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value  # The common leaves first: records are hashed on every step.
    if isinstance(value, float) and value.is_integer() and abs(value) < _MAX_SAFE_INT:
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _normalize(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalize(v) for v in value]
    return value


# One encoder for every hash: `json.dumps` with options builds a new encoder per call,
# which costs more than encoding a small record (records are hashed on every step).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: Any) -> bytes:
    """The canonical JSON bytes of a JSON-compatible value."""
    return _CANONICAL.encode(_normalize(value)).encode()


_EMPTY_OBJECT_SHA256 = hashlib.sha256(b"{}").hexdigest()


def digest(value: Any) -> str:
    """Hex SHA-256 of the canonical JSON of `value`; "" for None (no output)."""
    if value is None:
        return ""
    if type(value) is dict and not value:
        return _EMPTY_OBJECT_SHA256  # The input or output of most steps.
    return hashlib.sha256(canonical_json(value)).hexdigest()


def genesis_hash(execution_id: str) -> str:
    """The prev_hash of an execution's first record."""
    return hashlib.sha256(f"{PROOF_VERSION}:{execution_id}".encode()).hexdigest()


def record_hash(record: Mapping[str, Any]) -> str:
    """Hex SHA-256 of a record's canonical JSON (its `hash` field excluded)."""
    body = {name: record[name] for name in RECORD_FIELDS}
    if all(type(v) is str or type(v) is int for v in body.values()):
        # Strings and integers are their own canonical form: nothing to normalize. A
        # record read back from a proof may carry floats (JSON numbers): normalized below.
        return hashlib.sha256(_CANONICAL.encode(body).encode()).hexdigest()
    return hashlib.sha256(canonical_json(body)).hexdigest()


def append_record(records: list[dict[str, Any]], execution_id: str, **fields: Any) -> None:
    """Appends a record to a chain, filling index, prev_hash and hash."""
    record: dict[str, Any] = {
        "index": len(records),
        "execution_id": execution_id,
        "prev_hash": records[-1]["hash"] if records else genesis_hash(execution_id),
        **fields,
    }
    record["hash"] = record_hash(record)
    records.append(record)


def head_hash(execution_id: str, records: Sequence[Mapping[str, Any]]) -> str:
    """The hash the signature covers: the last record's, or the genesis hash."""
    return str(records[-1]["hash"]) if records else genesis_hash(execution_id)


def signing_message(
    execution_id: str, workflow_id: str, final_state: str, count: int, head: str
) -> bytes:
    """The exact bytes the orchestrator signs."""
    return (
        f"{PROOF_VERSION}\n{execution_id}\n{workflow_id}\n{final_state}\n{count}\n{head}".encode()
    )


def attestation_message(proof: orchestrator_pb2.ExecutionProof) -> bytes:
    """What the orchestrator's Grace certificate key signs: the signing message and the
    hex of the Ed25519 public key, so the key and the chain head are bound to the
    orchestrator's identity."""
    return (
        signing_message(
            proof.execution_id,
            proof.workflow_id,
            proof.final_state,
            len(proof.records),
            proof.head_hash,
        )
        + b"\n"
        + proof.public_key.hex().encode()
    )


@dataclass(frozen=True)
class Verdict:
    """Outcome of a verification.

    Attributes:
        valid: True when every record, the chain and the signature check out.
        first_invalid_record: Index of the first record that does not check out, or -1.
        reason: Why the proof is invalid; "" when valid.
    """

    valid: bool
    first_invalid_record: int = -1
    reason: str = ""


def _record_dict(record: orchestrator_pb2.ProofRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in (*RECORD_FIELDS, "hash")}


def verify_proof(
    proof: orchestrator_pb2.ExecutionProof, public_key: bytes = b"", ca_bundle: bytes = b""
) -> Verdict:
    """Verifies a proof offline: each record's hash, the chain links, the head, the signature.

    Args:
        proof: The proof as returned by GetExecutionProof.
        public_key: Raw Ed25519 key that must have signed it; empty trusts the proof's key.
        ca_bundle: PEM of the Grace CA: the proof's signer certificate must be issued by it
            to `component:orchestrator`, its key must have signed the proof's key and head,
            and when it binds an Ed25519 signing key (`services.common.pki`), that must be
            the proof's key. Empty checks only the proof's own consistency.
    """
    if public_key and public_key != proof.public_key:
        return Verdict(
            False,
            -1,
            f"the proof was signed by key {signing.key_id(proof.public_key)}, "
            f"not by the trusted key {signing.key_id(public_key)}",
        )
    if ca_bundle:
        if not proof.signer_certificate_pem:
            return Verdict(False, -1, "the proof carries no signer certificate to check")
        try:
            bound = check_attestation(
                ca_bundle,
                proof.signer_certificate_pem.encode(),
                attestation_message(proof),
                proof.certificate_signature,
                ORCHESTRATOR_IDENTITY,
            )
        except PkiError as exc:
            return Verdict(False, -1, f"signer: {exc}")
        if bound is not None and bound != proof.public_key:
            return Verdict(
                False,
                -1,
                f"signer: the orchestrator's certificate binds signing key "
                f"{signing.key_id(bound)}, not the proof's key {signing.key_id(proof.public_key)}",
            )
    previous = genesis_hash(proof.execution_id)
    for position, record in enumerate(proof.records):
        fields = _record_dict(record)
        if fields["index"] != position:
            return Verdict(False, position, f"record {position} has index {fields['index']}")
        if fields["execution_id"] != proof.execution_id:
            return Verdict(False, position, f"record {position} belongs to another execution")
        if fields["prev_hash"] != previous:
            return Verdict(False, position, f"record {position} does not link to the one before")
        if record_hash(fields) != fields["hash"]:
            return Verdict(False, position, f"record {position} was altered (hash mismatch)")
        previous = fields["hash"]
    if proof.head_hash != previous:
        return Verdict(False, len(proof.records), "head_hash is not the hash of the last record")
    message = signing_message(
        proof.execution_id, proof.workflow_id, proof.final_state, len(proof.records), previous
    )
    if not signing.verify(proof.public_key, message, proof.signature):
        return Verdict(False, -1, "the signature does not match the chain head")
    return Verdict(True)


def load_proof(text: str) -> orchestrator_pb2.ExecutionProof:
    """Parses the JSON of a GetExecutionProof response, or of its `proof` field."""
    raw = json.loads(text)
    if isinstance(raw, dict) and "proof" in raw:
        raw = raw["proof"]
    proof = orchestrator_pb2.ExecutionProof()
    json_format.ParseDict(raw, proof, ignore_unknown_fields=True)
    return proof


def _key(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        try:
            return base64.b64decode(text, validate=True)
        except binascii.Error:
            raise SystemExit(f"--public-key: {text!r} is neither hex nor base64") from None


@dataclass(frozen=True)
class KeyTrust:
    """Which key a proof's signer must be, and where that key came from.

    Attributes:
        public_key: The trusted raw Ed25519 key; empty when no key is trusted.
        described: The key and its origin, in words (printed by `grace verify-proof`).
    """

    public_key: bytes
    described: str


def key_trust(*, pinned: bytes = b"", data_dir: Path | None = None) -> KeyTrust:
    """The key a proof must be signed by: the one pinned (`--public-key`), else the
    orchestrator's key published in `data_dir`; none otherwise.

    The one place that decides which signer is trusted: checking a certificate bundle
    extends this function.
    """
    if pinned:
        return KeyTrust(pinned, f"key {signing.key_id(pinned)} given with --public-key")
    if data_dir is not None:
        path = signing.public_key_path(component_key_path(data_dir, "orchestrator"))
        found = signing.read_public_key(path)
        if found is not None:
            return KeyTrust(found, f"key {signing.key_id(found)} of the orchestrator in {path}")
        return KeyTrust(
            b"",
            f"no trusted key: {path} does not exist; pass --public-key, or --data-dir "
            "(GRACE_DATA_DIR) of the Grace that signed the proof",
        )
    return KeyTrust(b"", "no trusted key: pass --public-key or --data-dir")


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """`verify-proof FILE [--public-key KEY] [--data-dir DIR]`: exit 0 when valid and signed
    by a trusted key, 1 when not, 2 on bad input."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(
        prog="grace verify-proof",
        description="Verify an execution proof offline, and that a trusted key signed it.",
    )
    parser.add_argument("file", help="JSON of a GetExecutionProof response ('-' for stdin)")
    parser.add_argument(
        "--public-key", default="", help="pin the orchestrator's public key (hex or base64)"
    )
    parser.add_argument(
        "--data-dir",
        default=env.get("GRACE_DATA_DIR") or DEFAULT_DATA_DIR,
        help="data dir whose orchestrator.pub is trusted (GRACE_DATA_DIR; default ./.grace)",
    )
    parser.add_argument(
        "--ca",
        default="",
        help="the Grace CA bundle (<data dir>/pki/ca.crt): the signer must be Grace's "
        "orchestrator, certified by it (default: the data dir's, when there is one)",
    )
    args = parser.parse_args(argv)
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        proof = load_proof(text)
        bundle = Path(args.ca).read_bytes() if args.ca else b""
    except (OSError, ValueError, json_format.ParseError) as exc:
        print(f"verify-proof: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    pinned = _key(args.public_key) if args.public_key else b""
    data_dir = Path(args.data_dir)
    if not bundle and not pinned:
        # A secure Grace's data dir holds its CA: the signer must be certified by it.
        ca_file = data_dir / "pki" / "ca.crt"
        bundle = ca_file.read_bytes() if ca_file.is_file() else b""
    if bundle:
        print(
            "checked against the Grace CA bundle"
            + (f" and key {signing.key_id(pinned)}" if pinned else "")
        )
        verdict = verify_proof(proof, pinned, bundle)
    else:
        trust = key_trust(pinned=pinned, data_dir=data_dir)
        print(f"checked against {trust.described}")
        if not trust.public_key:
            print(f"INVALID: the signer (key {proof.key_id}) cannot be checked: {trust.described}")
            return 1
        verdict = verify_proof(proof, trust.public_key)
    if verdict.valid:
        signer = " (orchestrator certified by the Grace CA)" if bundle else ""
        print(
            f"valid: execution {proof.execution_id} ({proof.final_state}), "
            f"{len(proof.records)} records, signed by key {proof.key_id}{signer}"
        )
        return 0
    where = f" (record {verdict.first_invalid_record})" if verdict.first_invalid_record >= 0 else ""
    print(f"INVALID{where}: {verdict.reason}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
