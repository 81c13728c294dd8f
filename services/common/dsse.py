"""Signed statements over exact bytes: DSSE pre-authentication encoding and canonical JSON.

A statement's signature covers `PAE(type, body)` =
`"DSSEv1" SP len(type) SP type SP len(body) SP body` (the encoding of DSSE, used by in-toto
and Sigstore), so a signature made for one kind of statement can never be replayed as
another kind. Bodies made of strings and integers are serialized as canonical JSON (sorted
keys, no spaces, UTF-8); floats are refused because their text form differs between
languages. Keys and plain signatures are in `services.common.signing`.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from services.common import signing


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE pre-authentication encoding: the exact bytes a statement's signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(body), body)


def canonical_json(value: Any) -> bytes:
    """Sorted-key, space-free UTF-8 JSON of strings, integers, lists and objects."""
    _reject_floats(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _reject_floats(value: Any) -> None:
    if isinstance(value, float):
        raise TypeError("canonical_json: floats are not allowed in signed statements")
    if isinstance(value, dict):
        for item in value.values():
            _reject_floats(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _reject_floats(item)


def sign_statement(
    key: signing.SigningKey | Ed25519PrivateKey, payload_type: str, body: Any
) -> bytes:
    """Signs `body` (canonical JSON) under `payload_type`."""
    return key.sign(pae(payload_type, canonical_json(body)))


def verify_statement(public_key: bytes, payload_type: str, body: Any, signature: bytes) -> bool:
    """Checks a signature made by `sign_statement`."""
    return signing.verify(public_key, pae(payload_type, canonical_json(body)), signature)


def verify_with(key: Ed25519PublicKey, message: bytes, signature: bytes) -> bool:
    """`signing.verify` with an already loaded key (hot paths keep keys loaded)."""
    try:
        key.verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def load_public_key(data: bytes) -> Ed25519PublicKey:
    """A public key from raw 32 bytes or a PEM SubjectPublicKeyInfo block.

    Raises:
        ValueError: not an Ed25519 public key.
    """
    if len(data) == signing.PUBLIC_KEY_BYTES:
        return Ed25519PublicKey.from_public_bytes(data)
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    """The raw 32 bytes of a public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_pem(key: signing.SigningKey) -> bytes:
    """The public key as PEM (SubjectPublicKeyInfo), for files users pass around."""
    return key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
