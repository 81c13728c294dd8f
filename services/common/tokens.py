"""Bearer tokens for people, tools and joining domains.

A token is 32 random bytes (URL-safe base64, prefixed `grace_`), shown once when created.
Only its SHA-256 is stored, in one JSON file (`<data dir>/pki/tokens.json`, mode 0600)
with its principal, roles, expiry and revocation. Every server reads that file through a
`TokenValidator`, which re-reads it when it changed, checked at most once per `refresh_s`
(1 s by default) and whenever a token is not found: validating a token costs a hash and a
dict lookup, never a network round trip, a new token works everywhere at once, and a
revocation takes effect everywhere within `refresh_s`.

Roles: `admin` (everything), `operator` (Guardian control, policies, approvals, plus
reads), `reader` (reads), and `domain:<id>` (acts as that domain: a join token).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from services.common.pki import write_private

TOKEN_PREFIX = "grace_"
BASE_ROLES = ("admin", "operator", "reader")
MAX_TTL = datetime.timedelta(days=3650)
DEFAULT_TTL = datetime.timedelta(days=30)
_PRINCIPAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
_DOMAIN_ROLE = re.compile(r"^domain:[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class TokenError(ValueError):
    """A token request is malformed (the message names the field and the rule)."""


def tokens_file(data_dir: Path) -> Path:
    """`<data dir>/pki/tokens.json`."""
    return data_dir / "pki" / "tokens.json"


def admin_token_file(data_dir: Path) -> Path:
    """`<data dir>/admin.token`: the credential `grace up` writes for the CLI (0600)."""
    return data_dir / "admin.token"


def parse_duration(text: str) -> datetime.timedelta:
    """`90s`, `15m`, `24h`, `30d`, `2w` as a timedelta."""
    match = _DURATION.match(text.strip())
    if not match:
        raise TokenError(f"ttl {text!r}: expected a number and a unit (s, m, h, d, w), e.g. 24h")
    value = datetime.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    if value <= datetime.timedelta(0) or value > MAX_TTL:
        raise TokenError(f"ttl {text!r}: must be positive and at most {MAX_TTL.days} days")
    return value


def validate_role(role: str) -> str:
    """`role` when it is admin, operator, reader or domain:<id>."""
    if role in BASE_ROLES or _DOMAIN_ROLE.match(role):
        return role
    raise TokenError(f"role {role!r}: expected one of {', '.join(BASE_ROLES)} or domain:<id>")


def token_digest(token: str) -> str:
    """The stored form of a token: hex SHA-256."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_id(digest: str) -> str:
    """The public id of a token: the first 12 hex digits of its digest."""
    return digest[:12]


@dataclass(frozen=True)
class TokenRecord:
    """One stored token (never the token itself).

    Attributes:
        id: Public id (prefix of the digest), used to list and revoke.
        digest: Hex SHA-256 of the token.
        principal: Who the token authenticates.
        roles: What the principal may do.
        created_at: Unix seconds.
        expires_at: Unix seconds.
        revoked: True once revoked.
    """

    id: str
    digest: str
    principal: str
    roles: tuple[str, ...]
    created_at: float
    expires_at: float
    revoked: bool = False

    def active(self, now: float) -> bool:
        """Not revoked and not expired."""
        return not self.revoked and now < self.expires_at


def _records(raw: object) -> dict[str, TokenRecord]:
    if not isinstance(raw, dict) or not isinstance(raw.get("tokens"), list):
        return {}
    out: dict[str, TokenRecord] = {}
    for item in raw["tokens"]:
        record = TokenRecord(
            id=str(item["id"]),
            digest=str(item["digest"]),
            principal=str(item["principal"]),
            roles=tuple(str(r) for r in item["roles"]),
            created_at=float(item["created_at"]),
            expires_at=float(item["expires_at"]),
            revoked=bool(item.get("revoked", False)),
        )
        out[record.digest] = record
    return out


class TokenStore:
    """Creates, lists and revokes tokens in the token file (writers lock the file).

    Args:
        path: The token file.
        clock: Unix seconds now.
    """

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, TokenRecord]]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with lock_path.open("a") as lock:
            lock_path.chmod(0o600)
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                records = self.load()
                yield records
                payload = {"tokens": [asdict(r) for r in records.values()]}
                write_private(self.path, json.dumps(payload, indent=1).encode())
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def load(self) -> dict[str, TokenRecord]:
        """Every record by digest ({} when the file does not exist)."""
        try:
            return _records(json.loads(self.path.read_text()))
        except FileNotFoundError:
            return {}

    def create(
        self, principal: str, roles: Sequence[str], ttl: datetime.timedelta = DEFAULT_TTL
    ) -> tuple[str, TokenRecord]:
        """A new token for `principal` with `roles`; returns (token, record)."""
        if not _PRINCIPAL.match(principal):
            raise TokenError(
                f"principal {principal!r}: expected 1-128 letters, digits or . _ : @ -"
            )
        if not roles:
            raise TokenError("roles: at least one role is required")
        checked = tuple(dict.fromkeys(validate_role(r) for r in roles))
        if ttl <= datetime.timedelta(0) or ttl > MAX_TTL:
            raise TokenError(f"ttl: must be positive and at most {MAX_TTL.days} days")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        digest = token_digest(token)
        now = self._clock()
        record = TokenRecord(
            id=token_id(digest),
            digest=digest,
            principal=principal,
            roles=checked,
            created_at=now,
            expires_at=now + ttl.total_seconds(),
        )
        with self._locked() as records:
            records[digest] = record
        return token, record

    def revoke(self, token_or_id: str) -> TokenRecord:
        """Revokes a token given itself or its id; raises TokenError when unknown."""
        key = token_or_id.strip()
        digest = token_digest(key) if key.startswith(TOKEN_PREFIX) else None
        with self._locked() as records:
            for record in records.values():
                if record.digest == digest or record.id == key:
                    revoked = replace(record, revoked=True)
                    records[record.digest] = revoked
                    return revoked
        raise TokenError(f"token {key!r}: no token with this id")

    def list(self) -> list[TokenRecord]:
        """Every token, oldest first."""
        return sorted(self.load().values(), key=lambda r: r.created_at)


class TokenValidator:
    """Resolves bearer tokens to records from the token file, without network calls.

    The file is re-read when its modification time or size changed, checked at most once
    per `refresh_s`, and again whenever a token is not found: a token created a moment ago
    (a join token Guardian issued just before it started the domain) works at once, and a
    revoked one stops working within `refresh_s`. A miss costs a `stat` of the file; it is
    read again only if it changed.

    Args:
        path: The token file.
        refresh_s: Longest time a change to the file goes unseen.
        clock: Unix seconds now.
    """

    def __init__(
        self, path: Path, refresh_s: float = 1.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = path
        self._refresh_s = refresh_s
        self._clock = clock
        self._records: dict[str, TokenRecord] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked_at = float("-inf")
        self._lock = threading.Lock()

    def _refresh(self, now: float, *, force: bool = False) -> None:
        if not force and now - self._checked_at < self._refresh_s:
            return
        with self._lock:
            self._checked_at = now
            try:
                stat = self.path.stat()
            except FileNotFoundError:
                self._records, self._stamp = {}, None
                return
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                self._records = TokenStore(self.path).load()
                self._stamp = stamp

    def validate(self, token: str) -> TokenRecord | None:
        """The active record of `token`, or None (unknown, expired or revoked)."""
        now = self._clock()
        self._refresh(time.monotonic())
        digest = token_digest(token)
        record = self._records.get(digest)
        if record is None:
            self._refresh(time.monotonic(), force=True)
            record = self._records.get(digest)
        if record is None or not record.active(now):
            return None
        return record
