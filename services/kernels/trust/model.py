"""Records of the trust kernel: keys, identities, certifications."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class KeyState(enum.Enum):
    """Where a key is in its life."""

    ACTIVE = "active"
    ROTATED = "rotated"
    REVOKED = "revoked"


class Level(enum.Enum):
    """Trust level of a certification."""

    NONE = "none"
    PARTIAL = "partial"
    FULL = "full"


@dataclass(frozen=True)
class KeyRecord:
    """One public key of a domain."""

    key_id: str
    domain_id: str
    public_key: bytes
    state: KeyState
    created_at: float
    retired_at: float = 0.0
    revocation_reason: str = ""


@dataclass(frozen=True)
class Identity:
    """A domain's keys, oldest first, and its current key if any."""

    domain_id: str
    keys: tuple[KeyRecord, ...]

    @property
    def current(self) -> KeyRecord | None:
        """The active key, if any."""
        for key in self.keys:
            if key.state is KeyState.ACTIVE:
                return key
        return None


@dataclass(frozen=True)
class Certification:
    """A signed statement by `issuer` about `subject`."""

    issuer: str
    subject: str
    level: Level
    issued_at: int
    key_id: str
    signature: bytes


@dataclass(frozen=True)
class Verdict:
    """Answer of VerifyMessage."""

    verified: bool
    trusted: bool
    path: tuple[str, ...] = ()
    path_level: Level | None = None
    reason: str = ""
    key_id: str = ""
