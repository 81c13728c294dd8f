"""The signed statements of the trust kernel: their DSSE payload types and canonical bodies.

Every statement is signed as `dsse.pae(type, dsse.canonical_json(body))` (DSSE
pre-authentication encoding of sorted-key, space-free UTF-8 JSON made only of strings and
integers). Binary values are standard base64. Clients (the SDK, tests, any language) build
the same bodies; the functions here are the reference.
"""

from __future__ import annotations

import base64
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.common import dsse, signing

REGISTRATION = "application/vnd.grace.trust.registration.v1+json"
ROTATION = "application/vnd.grace.trust.rotation.v1+json"
REVOCATION = "application/vnd.grace.trust.revocation.v1+json"
CERTIFICATION = "application/vnd.grace.trust.certification.v1+json"

LEVEL_NAMES = ("none", "partial", "full")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def registration(domain_id: str, public_key: bytes, challenge: bytes) -> dict[str, Any]:
    """Body of a registration (proof of possession over the server's challenge)."""
    return {"challenge": _b64(challenge), "domain_id": domain_id, "public_key": _b64(public_key)}


def rotation(
    domain_id: str, old_key_id: str, new_public_key: bytes, issued_at: int
) -> dict[str, Any]:
    """Body of a key rotation, signed by the old key and by the new one."""
    return {
        "domain_id": domain_id,
        "issued_at": issued_at,
        "new_public_key": _b64(new_public_key),
        "old_key_id": old_key_id,
    }


def revocation(domain_id: str, key_id: str, reason: str, issued_at: int) -> dict[str, Any]:
    """Body of a key revocation."""
    return {"domain_id": domain_id, "issued_at": issued_at, "key_id": key_id, "reason": reason}


def certification(issuer: str, subject: str, level: str, issued_at: int) -> dict[str, Any]:
    """Body of a certification; `level` is "full", "partial" or "none"."""
    if level not in LEVEL_NAMES:
        raise ValueError(f"level must be one of {', '.join(LEVEL_NAMES)}")
    return {"issued_at": issued_at, "issuer": issuer, "level": level, "subject": subject}


def sign(
    key: signing.SigningKey | Ed25519PrivateKey, payload_type: str, body: dict[str, Any]
) -> bytes:
    """A client's signature over a statement."""
    return dsse.sign_statement(key, payload_type, body)
