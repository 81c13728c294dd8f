"""Ed25519 keys for Grace: key files, key ids, signing and verification, DSSE encoding.

Every component that signs (the immutable log's checkpoints, the orchestrator's proofs,
domains signing events and trust statements) keeps its private key in a PEM file (PKCS#8,
mode 0600) under the data directory, created on first start. Public keys travel as the raw
32 bytes.

Signed statements use the DSSE pre-authentication encoding (PAE): the signature covers
`"DSSEv1" SP len(type) SP type SP len(body) SP body`, so a signature made for one kind of
statement can never be replayed as another kind, and the signer signs exact bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def generate_private_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 private key."""
    return Ed25519PrivateKey.generate()


def load_or_create_private_key(path: Path) -> Ed25519PrivateKey:
    """The private key in `path` (PEM, PKCS#8); creates it (mode 0600) when missing."""
    if path.exists():
        return load_private_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = generate_private_key()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # O_EXCL: two processes starting at once must not overwrite each other's key.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Reads a PEM (PKCS#8) Ed25519 private key."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32-byte public key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The public key as PEM (SubjectPublicKeyInfo), for files users pass around."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(data: bytes) -> Ed25519PublicKey:
    """A public key from raw 32 bytes or a PEM SubjectPublicKeyInfo block."""
    if len(data) == PUBLIC_KEY_BYTES:
        return Ed25519PublicKey.from_public_bytes(data)
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def key_id(public_key: bytes) -> str:
    """Grace's id of a public key: the first 16 hex digits of SHA-256(raw key)."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def verify(public_key: bytes | Ed25519PublicKey, message: bytes, signature: bytes) -> bool:
    """True when `signature` is a valid Ed25519 signature of `message` by the key."""
    try:
        key = (
            public_key
            if isinstance(public_key, Ed25519PublicKey)
            else Ed25519PublicKey.from_public_bytes(public_key)
        )
        key.verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE pre-authentication encoding: the exact bytes a statement's signature covers."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(body), body)


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON for statements made of strings, integers, lists and objects:
    keys sorted, no spaces, UTF-8. Floats are refused: their text form differs between
    languages."""
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


def sign_statement(key: Ed25519PrivateKey, payload_type: str, body: Any) -> bytes:
    """Signs `body` (canonical JSON) under `payload_type` with DSSE PAE."""
    return key.sign(pae(payload_type, canonical_json(body)))


def verify_statement(
    public_key: bytes | Ed25519PublicKey, payload_type: str, body: Any, signature: bytes
) -> bool:
    """Checks a signature made by `sign_statement`."""
    return verify(public_key, pae(payload_type, canonical_json(body)), signature)
