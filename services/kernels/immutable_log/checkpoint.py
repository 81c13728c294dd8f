"""Checkpoints in the C2SP tlog-checkpoint / signed-note format, signed with Ed25519.

A checkpoint is the note text

    <origin>\\n<tree size>\\n<base64 root hash>\\n

followed by a blank line and one signature line per signer,

    \\u2014 <key name> <base64(4-byte key id || 64-byte Ed25519 signature)>\\n

where the signature covers the note text exactly and the key id is
`SHA-256(key name || 0x0A || 0x01 || public key)[:4]` (0x01 = Ed25519). The verifier key
string `<name>+<hex key id>+<base64(0x01 || public key)>` is what users hold to check
checkpoints offline. Everything here is pure.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.common import dsse, signing

_EM_DASH = "\u2014"
_ED25519_TYPE = b"\x01"


class CheckpointError(ValueError):
    """A checkpoint or verifier key is malformed, or its signature does not verify."""


@dataclass(frozen=True)
class Checkpoint:
    """A verified tree head."""

    origin: str
    size: int
    root_hash: bytes


def note_key_id(name: str, public_key: bytes) -> bytes:
    """The signed-note key id: SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + _ED25519_TYPE + public_key).digest()[:4]


def verifier_key(name: str, public_key: bytes) -> str:
    """The C2SP verifier key string for an Ed25519 key."""
    encoded = base64.b64encode(_ED25519_TYPE + public_key).decode()
    return f"{name}+{note_key_id(name, public_key).hex()}+{encoded}"


def parse_verifier_key(text: str) -> tuple[str, bytes]:
    """(name, raw public key) from a verifier key string; checks its key id."""
    try:
        # Key names never contain "+" (C2SP signed-note); base64 may, so split from the left.
        name, hex_id, encoded = text.strip().split("+", 2)
        raw = base64.b64decode(encoded, validate=True)
        key_hash = bytes.fromhex(hex_id)
    except (ValueError, binascii.Error):
        raise CheckpointError("verifier key: expected <name>+<hex id>+<base64 key>") from None
    if len(raw) != 33 or raw[:1] != _ED25519_TYPE:
        raise CheckpointError("verifier key: not an Ed25519 key")
    public_key = raw[1:]
    if note_key_id(name, public_key) != key_hash:
        raise CheckpointError("verifier key: key id does not match the name and key")
    return name, public_key


def checkpoint_body(origin: str, size: int, root_hash: bytes) -> str:
    """The note text a checkpoint signature covers."""
    return f"{origin}\n{size}\n{base64.b64encode(root_hash).decode()}\n"


def sign_checkpoint(
    origin: str, size: int, root_hash: bytes, key: Ed25519PrivateKey, key_name: str = ""
) -> str:
    """A signed checkpoint note; the key name defaults to the origin."""
    name = key_name or origin
    body = checkpoint_body(origin, size, root_hash)
    key_hash = note_key_id(name, dsse.raw_public_key(key.public_key()))
    signature = base64.b64encode(key_hash + key.sign(body.encode())).decode()
    return f"{body}\n{_EM_DASH} {name} {signature}\n"


def verify_checkpoint(note: str, name: str, public_key: bytes) -> Checkpoint:
    """Parses a signed checkpoint and checks a signature by (name, public_key) is on it.

    Raises:
        CheckpointError: malformed, or no valid signature by that key.
    """
    body, sep, signatures = note.partition("\n\n")
    if not sep or not body:
        raise CheckpointError("checkpoint: no blank line between the note and its signatures")
    body += "\n"
    lines = body.split("\n")
    if len(lines) < 4:
        raise CheckpointError("checkpoint: expected origin, tree size and root hash lines")
    origin, size_text, root_text = lines[0], lines[1], lines[2]
    try:
        size = int(size_text)
        root_hash = base64.b64decode(root_text, validate=True)
    except (ValueError, binascii.Error):
        raise CheckpointError("checkpoint: malformed tree size or root hash") from None
    if size < 0 or len(root_hash) != 32 or size_text != str(size):
        raise CheckpointError("checkpoint: malformed tree size or root hash")
    wanted_id = note_key_id(name, public_key)
    for line in signatures.splitlines():
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != _EM_DASH or parts[1] != name:
            continue
        try:
            raw = base64.b64decode(parts[2], validate=True)
        except binascii.Error:
            continue
        if raw[:4] == wanted_id and signing.verify(public_key, body.encode(), raw[4:]):
            return Checkpoint(origin, size, root_hash)
    raise CheckpointError(f"checkpoint: no valid signature by key {name!r}")
