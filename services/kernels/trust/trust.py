"""The trust kernel core: identities, certifications, message verification, scores.

State lives in memory (keys by id, identities by domain, certifications by issuer) and is
written through to the store under one lock, so reads (VerifyMessage, trust paths) never
touch the database. Every state change is a statement signed by the key that has the right
to make it (see `statements`); a statement is checked before anything changes. A change,
once begun, ends even when its caller goes away (`runs_to_completion`): a key stored but
not yet in memory would be unknown to every read, and a retry would insert it again and
fail on its id, until a restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from services.common import dsse, pagination, signing
from services.common.completion import runs_to_completion
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
)
from services.common.validation import require_id, require_text
from services.kernels.trust import statements
from services.kernels.trust.claims import Claimant, ClaimRules
from services.kernels.trust.model import (
    Certification,
    Identity,
    KeyRecord,
    KeyState,
    Level,
    Verdict,
)
from services.kernels.trust.scoring import (
    BehaviourSource,
    BehaviourUnavailable,
    Component,
    Weights,
    behaviour_components,
    certification_component,
    composite,
)
from services.kernels.trust.store import TrustStore
from services.kernels.trust.web import find_path

log = logging.getLogger(__name__)

Clock = Callable[[], float]
MAX_MESSAGE_BYTES = 1024 * 1024
MAX_CHALLENGES = 10_000


@dataclass(frozen=True)
class TrustSettings:
    """Behaviour of the trust kernel.

    Attributes:
        roots: Domains whose certifications anchor trust when no asking domain is given.
        max_depth: Default longest trust path (hops).
        depth_limit: Largest max_depth a request may ask for.
        challenge_ttl_s: How long a registration challenge is accepted.
        clock_skew_s: How far a statement's issued_at may be from now.
        weights: Weights of the trust score.
        claims: Which ids are reserved and how they may be claimed (`claims`); the
            default reserves none (the server reserves Grace's components).
    """

    roots: tuple[str, ...] = ()
    max_depth: int = 3
    depth_limit: int = 8
    challenge_ttl_s: float = 300.0
    clock_skew_s: float = 300.0
    weights: Weights = dataclasses.field(default_factory=Weights)
    claims: ClaimRules = dataclasses.field(default_factory=ClaimRules)


@dataclass(frozen=True)
class Score:
    """A trust score and its components."""

    domain_id: str
    score: float
    components: tuple[Component, ...]
    computed_at: float


def _public_key(field: str, value: bytes) -> bytes:
    if len(value) != signing.PUBLIC_KEY_BYTES:
        raise InvalidArgument(field, "must be a raw 32-byte Ed25519 public key")
    try:
        dsse.load_public_key(value)
    except ValueError:
        raise InvalidArgument(field, "is not a valid Ed25519 public key") from None
    return value


class TrustKernel:
    """The trust kernel. Call `open` before use.

    Args:
        store: Durable storage.
        settings: Behaviour.
        behaviour: Where lease and step behaviour comes from (the registry); None leaves
            those components unavailable.
        clock: Epoch seconds.
    """

    def __init__(
        self,
        store: TrustStore,
        settings: TrustSettings | None = None,
        behaviour: BehaviourSource | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.store = store
        self.settings = settings or TrustSettings()
        self._behaviour = behaviour
        self._clock = clock
        self._keys: dict[str, KeyRecord] = {}
        self._by_domain: dict[str, list[str]] = {}
        self._certs: dict[str, dict[str, Certification]] = {}
        self._challenges: dict[bytes, tuple[str, float]] = {}
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        """Opens storage and loads every key and certification."""
        await self.store.open()
        loaded = await self.store.load()
        for key in loaded.keys:
            self._remember(key)
        for cert in loaded.certifications:
            self._certs.setdefault(cert.issuer, {})[cert.subject] = cert

    def _remember(self, key: KeyRecord) -> None:
        if key.key_id not in self._keys:
            self._by_domain.setdefault(key.domain_id, []).append(key.key_id)
        self._keys[key.key_id] = key

    # Identities ---------------------------------------------------------------------

    def identity(self, domain_id: str) -> Identity:
        """A domain's identity.

        Raises:
            NotFound: the domain never registered a key.
        """
        ids = self._by_domain.get(domain_id)
        if not ids:
            raise NotFound("identity", domain_id)
        return Identity(domain_id, tuple(self._keys[k] for k in ids))

    def list_identities(
        self, size: int, token: str, size_of: Callable[[Identity], int] = lambda _: 0
    ) -> tuple[list[Identity], str]:
        """A page of identities ordered by domain id, and the next token.

        `size_of` tells an item's encoded size in the reply; the page ends early rather than
        exceed `pagination.MAX_PAGE_BYTES`.
        """
        limit = pagination.page_size(size)
        position = pagination.decode_token(token)
        after = str(position.get("after", "")) if position else ""
        names = sorted(d for d in self._by_domain if d > after)
        page, more = pagination.take_page(
            [self.identity(d) for d in names[: limit + 1]], limit, size_of
        )
        next_token = pagination.encode_token({"after": page[-1].domain_id}) if more else ""
        return page, next_token

    def create_challenge(self, domain_id: str) -> tuple[bytes, float]:
        """A one-time challenge for `domain_id` and when it expires."""
        require_id("domain_id", domain_id)
        now = self._clock()
        self._challenges = {c: v for c, v in self._challenges.items() if v[1] > now}
        if len(self._challenges) >= MAX_CHALLENGES:
            raise ResourceExhausted("too many outstanding challenges; try again later")
        challenge = secrets.token_bytes(32)
        expires = now + self.settings.challenge_ttl_s
        self._challenges[challenge] = (domain_id, expires)
        return challenge, expires

    @runs_to_completion
    async def register(
        self,
        domain_id: str,
        public_key: bytes,
        challenge: bytes,
        signature: bytes,
        claimant: Claimant | None = None,
    ) -> tuple[Identity, bool]:
        """Registers a key with proof of possession; (identity, created).

        Args:
            claimant: The authenticated caller and its certificate, or None when the
                server does not authenticate callers; judged by `claims`.

        Raises:
            PermissionDenied: the claim breaks `claims`.
        """
        require_id("domain_id", domain_id)
        _public_key("public_key", public_key)
        async with self._lock:
            issued = self._challenges.get(challenge)
            if issued is None or issued[0] != domain_id or issued[1] <= self._clock():
                raise Unauthenticated("challenge: unknown, expired or issued to another domain")
            body = statements.registration(domain_id, public_key, challenge)
            if not dsse.verify_statement(public_key, statements.REGISTRATION, body, signature):
                raise Unauthenticated("signature: not a signature of the registration by the key")
            del self._challenges[challenge]
            self._check_claim(domain_id, public_key, claimant)
            kid = signing.key_id(public_key)
            known = self._keys.get(kid)
            if known is not None and known.domain_id != domain_id:
                raise AlreadyExists("key", kid, f"registered to {known.domain_id!r}")
            if known is not None and known.state is not KeyState.ACTIVE:
                raise FailedPrecondition(f"key {kid} was {known.state.value}; use a new key")
            current = self._current(domain_id)
            if current is not None:
                if current.key_id == kid:
                    return self.identity(domain_id), False
                raise AlreadyExists("identity", domain_id, "it has an active key; rotate it")
            record = KeyRecord(kid, domain_id, public_key, KeyState.ACTIVE, self._clock())
            await self.store.save_keys([], [record])
            self._remember(record)
        log.info("registered key %s for %s", kid, domain_id)
        return self.identity(domain_id), True

    def _check_claim(self, domain_id: str, public_key: bytes, claimant: Claimant | None) -> None:
        try:
            self.settings.claims.check(domain_id, public_key, claimant)
        except PermissionDenied as exc:
            log.warning(
                "refused a claim on id %s (key %s, principal %s): %s",
                domain_id,
                signing.key_id(public_key),
                claimant.principal.name if claimant is not None else "none",
                exc.reason,
            )
            raise

    def _current(self, domain_id: str) -> KeyRecord | None:
        for kid in self._by_domain.get(domain_id, ()):
            if self._keys[kid].state is KeyState.ACTIVE:
                return self._keys[kid]
        return None

    def _check_fresh(self, issued_at: int) -> None:
        if abs(self._clock() - issued_at) > self.settings.clock_skew_s:
            raise InvalidArgument(
                "issued_at", f"must be within {self.settings.clock_skew_s:g}s of the server clock"
            )

    @runs_to_completion
    async def rotate(
        self,
        domain_id: str,
        new_public_key: bytes,
        issued_at: int,
        old_signature: bytes,
        new_signature: bytes,
        claimant: Claimant | None = None,
    ) -> Identity:
        """Replaces the domain's active key; signed by the old key and the new one.

        Args:
            claimant: As for `register`: the new key must be one the caller may register.
        """
        _public_key("new_public_key", new_public_key)
        self._check_fresh(issued_at)
        self._check_claim(domain_id, new_public_key, claimant)
        async with self._lock:
            current = self._current(domain_id)
            if current is None:
                raise FailedPrecondition(f"domain {domain_id!r} has no active key to rotate")
            new_id = signing.key_id(new_public_key)
            if new_id in self._keys:
                raise AlreadyExists("key", new_id)
            body = statements.rotation(domain_id, current.key_id, new_public_key, issued_at)
            if not dsse.verify_statement(
                current.public_key, statements.ROTATION, body, old_signature
            ):
                raise Unauthenticated("old_key_signature: not a signature by the current key")
            if not dsse.verify_statement(new_public_key, statements.ROTATION, body, new_signature):
                raise Unauthenticated("new_key_signature: not a signature by the new key")
            now = self._clock()
            retired = dataclasses.replace(current, state=KeyState.ROTATED, retired_at=now)
            record = KeyRecord(new_id, domain_id, new_public_key, KeyState.ACTIVE, now)
            await self.store.save_keys([retired], [record])
            self._remember(retired)
            self._remember(record)
        log.info("rotated %s: %s -> %s", domain_id, current.key_id, new_id)
        return self.identity(domain_id)

    @runs_to_completion
    async def revoke(
        self,
        domain_id: str,
        key_id: str,
        reason: str,
        issued_at: int,
        signature: bytes,
        signer_key_id: str = "",
    ) -> Identity:
        """Revokes a key, signed by itself or by the domain's current key."""
        require_text("reason", reason, max_length=256)
        self._check_fresh(issued_at)
        async with self._lock:
            key = self._keys.get(key_id)
            if key is None or key.domain_id != domain_id:
                raise NotFound("key", key_id)
            signer = self._keys.get(signer_key_id or key_id)
            current = self._current(domain_id)
            if (
                signer is None
                or signer.domain_id != domain_id
                or not (signer.key_id == key_id or (current is not None and signer is current))
            ):
                raise Unauthenticated("signer_key_id: must be the key itself or the current key")
            if signer.state is KeyState.REVOKED and signer.key_id != key_id:
                raise Unauthenticated("signer_key_id: the signing key is revoked")
            body = statements.revocation(domain_id, key_id, reason, issued_at)
            if not dsse.verify_statement(signer.public_key, statements.REVOCATION, body, signature):
                raise Unauthenticated("signature: not a signature of the revocation by the signer")
            if key.state is KeyState.REVOKED:
                return self.identity(domain_id)
            revoked = dataclasses.replace(
                key,
                state=KeyState.REVOKED,
                retired_at=key.retired_at or self._clock(),
                revocation_reason=reason,
            )
            await self.store.save_keys([revoked], [])
            self._remember(revoked)
        log.warning("revoked key %s of %s: %s", key_id, domain_id, reason)
        return self.identity(domain_id)

    # Certifications -----------------------------------------------------------------

    def _valid(self, cert: Certification) -> bool:
        key = self._keys.get(cert.key_id)
        return key is not None and key.state is not KeyState.REVOKED

    @runs_to_completion
    async def establish(
        self, issuer: str, subject: str, level: Level, issued_at: int, signature: bytes
    ) -> tuple[Certification, bool]:
        """Records a certification signed by the issuer's current key; (cert, mutual)."""
        require_id("issuer", issuer)
        require_id("subject", subject)
        if issuer == subject:
            raise InvalidArgument("subject", "must differ from issuer")
        async with self._lock:
            key = self._current(issuer)
            if key is None:
                raise FailedPrecondition(f"issuer {issuer!r} has no active key")
            if subject not in self._by_domain:
                raise NotFound("identity", subject)
            body = statements.certification(issuer, subject, level.value, issued_at)
            if not dsse.verify_statement(key.public_key, statements.CERTIFICATION, body, signature):
                raise Unauthenticated("signature: not a signature by the issuer's current key")
            cert = Certification(issuer, subject, level, issued_at, key.key_id, signature)
            existing = self._certs.get(issuer, {}).get(subject)
            if existing is not None and existing.issued_at >= issued_at:
                if existing.signature != signature:
                    raise FailedPrecondition(
                        "issued_at: not newer than the current certification "
                        f"({existing.issued_at})"
                    )
            else:
                await self.store.save_certification(cert)
                self._certs.setdefault(issuer, {})[subject] = cert
        return cert, self.mutual(issuer, subject)

    def mutual(self, a: str, b: str) -> bool:
        """Both domains certify each other with a level above none (valid keys)."""
        ab = self._certs.get(a, {}).get(b)
        ba = self._certs.get(b, {}).get(a)
        return all(c is not None and c.level is not Level.NONE and self._valid(c) for c in (ab, ba))

    def is_valid(self, cert: Certification) -> bool:
        """False when the certification's key has been revoked."""
        return self._valid(cert)

    def list_certifications(
        self,
        issuer: str,
        subject: str,
        size: int,
        token: str,
        size_of: Callable[[Certification], int] = lambda _: 0,
    ) -> tuple[list[Certification], str]:
        """A page of certifications ordered by (issuer, subject), and the next token.

        `size_of` tells an item's encoded size in the reply; the page ends early rather than
        exceed `pagination.MAX_PAGE_BYTES`.
        """
        limit = pagination.page_size(size)
        position = pagination.decode_token(token)
        after = tuple(position.get("after", ("", ""))) if position else ("", "")
        matching = sorted(
            (c.issuer, c.subject)
            for by_issuer in self._certs.values()
            for c in by_issuer.values()
            if (not issuer or c.issuer == issuer) and (not subject or c.subject == subject)
        )
        rest = [pair for pair in matching if pair > after]
        page, more = pagination.take_page(
            [self._certs[i][s] for i, s in rest[: limit + 1]], limit, size_of
        )
        last = [page[-1].issuer, page[-1].subject] if page else []
        next_token = pagination.encode_token({"after": last}) if more else ""
        return page, next_token

    def _edges(self) -> dict[str, dict[str, Level]]:
        return {
            issuer: {s: c.level for s, c in by.items() if self._valid(c)}
            for issuer, by in self._certs.items()
        }

    # Verification and scores --------------------------------------------------------

    def verify_message(
        self,
        domain_id: str,
        message: bytes,
        signature: bytes,
        asking_domain: str = "",
        max_depth: int = 0,
    ) -> Verdict:
        """Is the message signed by the domain's current key, and is the domain trusted?"""
        if len(message) > MAX_MESSAGE_BYTES:
            raise InvalidArgument("message", f"must be at most {MAX_MESSAGE_BYTES} bytes")
        if max_depth < 0 or max_depth > self.settings.depth_limit:
            raise InvalidArgument("max_depth", f"must be between 0 and {self.settings.depth_limit}")
        depth = max_depth or self.settings.max_depth
        if domain_id not in self._by_domain:
            return Verdict(False, False, reason=f"unknown domain {domain_id!r}")
        key = self._current(domain_id)
        if key is None:
            return Verdict(False, False, reason=f"domain {domain_id!r} has no active key")
        if not signing.verify(key.public_key, message, signature):
            return Verdict(False, False, reason="signature does not verify with the current key")
        starts = (asking_domain,) if asking_domain else self.settings.roots
        found = find_path(self._edges(), starts, domain_id, depth)
        if found is None:
            origin = f"domain {asking_domain!r}" if asking_domain else "the configured roots"
            return Verdict(
                True,
                False,
                reason=f"no trust path from {origin} within {depth} hops",
                key_id=key.key_id,
            )
        return Verdict(True, True, found[0], found[1], key_id=key.key_id)

    async def score(self, domain_id: str) -> Score:
        """The trust score of a domain (see `scoring`)."""
        require_id("domain_id", domain_id)
        weights = self.settings.weights
        incoming = [
            by[domain_id].level
            for by in self._certs.values()
            if domain_id in by and self._valid(by[domain_id])
        ]
        components = [certification_component(incoming, weights.certifications)]
        behaviour, problem = None, "no behaviour source configured"
        if self._behaviour is not None:
            try:
                behaviour = await self._behaviour.observe(domain_id)
                problem = ""
            except BehaviourUnavailable as exc:
                problem = str(exc)
        components += behaviour_components(behaviour, problem, weights)
        has_key = self._current(domain_id) is not None
        identity_detail = "active key" if has_key else "no active key: the score is 0"
        components.append(
            Component("identity", 1.0 if has_key else 0.0, 0.0, True, identity_detail)
        )
        return Score(domain_id, composite(components, has_key), tuple(components), self._clock())
