"""Verification of event signatures at the bus, with keys fetched from the trust kernel.

`EventVerifier.check(event)` answers one of the `SignatureStatus` values:

- VALID: signed, and the signature verifies with the source's active key.
- UNSIGNED_OPEN: unsigned, and the source has no registered key: accepted (domains that
  never registered a key can still publish).
- UNSIGNED: unsigned, but the source has a registered key: a violation.
- FORGED: signed, but not by the source's active key (bad signature, unknown, rotated or
  revoked key id, or a signed event from a source with no key): a violation.
- UNVERIFIED: the trust kernel could not be asked; accepted (the bus stays available when
  the trust kernel is down) and logged.

`enforce(event)` applies the configured mode: `reject` (the default) raises
PermissionDenied for violations, naming the source and what is wrong; `flag` logs and
counts violations but accepts the event; `off` checks nothing. Violations exist only for
sources with a registered identity: unsigned events from a source that never registered a
key are accepted in every mode.

Batch signatures (`services.common.event_signing`): the events of one signed PublishBatch
carry the same signature over their Merkle root. `check_batch` recomputes each event's leaf
and walks its inclusion path to a root, and verifies each distinct (key id, signature,
root, batch size) ONCE: the events of a group that reach the signed root share that one
verification; an event whose path reaches another root fails against the signature and is
FORGED on its own, without affecting the others. Verified roots are also remembered for
`root_ttl_s` (default 60 s), so redeliveries and duplicates of a batch cost no Ed25519 work.

Keys are cached per source domain (`ttl_s`, default 30 s; unknown sources and failed lookups
for `negative_ttl_s`, default 5 s), so a steady stream costs one Ed25519 verification per
event (one per batch for batch-signed events) and no RPC. A signed event whose key id the
cache does not hold (or from a source cached as having no key) refreshes that source's
entry at most once a second, so a new registration or a rotation is picked up at once; a
revocation is picked up within `ttl_s`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from grace.eventbus.v1 import event_pb2
from grace.kernels.trust.v1 import trust_pb2, trust_pb2_grpc
from services.common.channels import channel
from services.common.dsse import verify_with
from services.common.errors import PermissionDenied
from services.common.event_signing import batch_root, batch_signing_bytes, verify_event

log = logging.getLogger(__name__)

MODES = ("off", "flag", "reject")


class SignatureStatus(enum.Enum):
    """Outcome of checking one event (see the module docstring)."""

    VALID = "valid"
    UNSIGNED_OPEN = "unsigned_open"
    UNSIGNED = "unsigned"
    FORGED = "forged"
    UNVERIFIED = "unverified"

    @property
    def violation(self) -> bool:
        """True for the statuses `reject` mode refuses."""
        return self in (SignatureStatus.UNSIGNED, SignatureStatus.FORGED)


def _unsigned_status(entry: _Entry) -> SignatureStatus:
    """The status of an event judged without its signature: its source's keys are unknown
    (the trust kernel did not answer), or the event is unsigned."""
    if entry.failed:
        return SignatureStatus.UNVERIFIED
    return SignatureStatus.UNSIGNED if entry.keys else SignatureStatus.UNSIGNED_OPEN


class KeyLookupFailed(Exception):
    """The key source could not answer."""


class KeySource(Protocol):
    """Where public keys come from."""

    async def active_keys(self, domain_id: str) -> dict[str, bytes] | None:
        """{key id: raw public key} of the domain's active key(s); None for an unknown domain.

        Raises:
            KeyLookupFailed: the source is down.
        """
        ...


class TrustKeySource:
    """A `KeySource` over TrustService.GetIdentity.

    The channel opens on first use (grpc.aio channels bind to the running loop).

    Args:
        address: `host:port` of the trust kernel.
        timeout_s: Deadline of one lookup.
    """

    def __init__(self, address: str, timeout_s: float = 1.0) -> None:
        self._address = address
        self._channel: grpc.aio.Channel | None = None
        self._stub: trust_pb2_grpc.TrustServiceAsyncStub | None = None
        self._timeout = timeout_s

    async def close(self) -> None:
        """Closes the channel."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None

    async def active_keys(self, domain_id: str) -> dict[str, bytes] | None:
        if self._stub is None:
            self._channel = channel(self._address)
            self._stub = trust_pb2_grpc.TrustServiceStub(self._channel)
        try:
            response = await self._stub.GetIdentity(
                trust_pb2.GetIdentityRequest(domain_id=domain_id), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise KeyLookupFailed(f"trust kernel: {exc.code().name}") from exc
        current = response.identity.current_key
        return {current.key_id: current.public_key} if current.key_id else {}


def _retrieved(task: asyncio.Future[_Entry]) -> None:
    if not task.cancelled():
        task.exception()  # logged by the lookup itself; not "never retrieved"


@dataclass
class _Entry:
    keys: dict[str, Ed25519PublicKey] | None  # None: the source has no identity
    fetched_at: float
    failed: bool = False


@dataclass
class EventVerifier:
    """Checks event signatures against cached keys and applies the configured mode.

    Attributes:
        source: Where keys come from.
        mode: "off", "flag" or "reject".
        ttl_s: How long known keys are cached.
        negative_ttl_s: How long unknown sources and failed lookups are cached.
        clock: Monotonic seconds.
        counts: Events seen per status, for stats.
        root_ttl_s: How long a verified batch root signature is remembered.
        max_roots: Most batch roots remembered (the oldest are dropped first).
        vouched: Tells whether the authenticated publisher of an event is its source
            itself. Such an unsigned event is
            accepted: the transport authenticated who sent it, as a signature would have.
            A signature that does not verify is refused all the same.
    """

    source: KeySource
    mode: str = "reject"
    ttl_s: float = 30.0
    negative_ttl_s: float = 5.0
    clock: Callable[[], float] = time.monotonic
    counts: Counter[str] = field(default_factory=Counter)
    root_ttl_s: float = 60.0
    max_roots: int = 4096
    vouched: Callable[[event_pb2.Event], bool] | None = None
    _cache: dict[str, _Entry] = field(default_factory=dict)
    _lookups: dict[str, asyncio.Future[_Entry]] = field(default_factory=dict)
    # (key id, signature, root, batch size) -> when verified; only successes are kept.
    _roots: dict[tuple[str, bytes, bytes, int], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")

    async def _entry(self, domain_id: str, refresh: bool = False) -> _Entry:
        now = self.clock()
        entry = self._cache.get(domain_id)
        if entry is not None:
            ttl = self.ttl_s if entry.keys and not entry.failed else self.negative_ttl_s
            fresh = now - entry.fetched_at < ttl
            if fresh and not (refresh and now - entry.fetched_at >= 1.0):
                return entry
            if not refresh:
                # Expired: answer from it while one lookup in the background replaces it,
                # instead of holding every publish of the source for a round trip to the
                # trust kernel each time the entry expires (the bus's latency spikes). A
                # rotation or revocation still lands within the TTL plus one lookup's
                # deadline. A key id the entry does not know (`refresh`) still waits.
                self._refresh_soon(domain_id)
                return entry
        # Shielded: a publish that gives up must not cancel the lookup others wait for.
        return await asyncio.shield(self._lookup_once(domain_id))

    def _refresh_soon(self, domain_id: str) -> None:
        if domain_id not in self._lookups:
            task = asyncio.ensure_future(self._lookup_once(domain_id))
            task.add_done_callback(_retrieved)

    def _lookup_once(self, domain_id: str) -> asyncio.Future[_Entry]:
        """The lookup of a source's keys under way, or a new one: concurrent publishes of a
        source share one call to the trust kernel."""
        lookup = self._lookups.get(domain_id)
        if lookup is None:
            lookup = self._lookups[domain_id] = asyncio.ensure_future(self._lookup(domain_id))
            lookup.add_done_callback(lambda _: self._lookups.pop(domain_id, None))
        return lookup

    async def _lookup(self, domain_id: str) -> _Entry:
        now = self.clock()
        try:
            raw = await self.source.active_keys(domain_id)
            keys = (
                None
                if raw is None
                else {kid: Ed25519PublicKey.from_public_bytes(key) for kid, key in raw.items()}
            )
            entry = _Entry(keys, now)
        except (KeyLookupFailed, ValueError) as exc:
            log.warning("cannot fetch keys of %s: %s", domain_id, exc)
            entry = _Entry(None, now, failed=True)
        self._cache[domain_id] = entry
        return entry

    async def check(self, event: event_pb2.Event) -> SignatureStatus:
        """The signature status of an event (either signature form)."""
        return await self._check(event, {})

    async def check_batch(self, events: Sequence[event_pb2.Event]) -> list[SignatureStatus]:
        """The signature status of each event; one Ed25519 verify per signed batch.

        Each source's keys are looked up once per batch, and an unsigned event is judged
        without further work: the common unsigned batch costs a dict lookup per event.
        """
        memo: dict[tuple[str, bytes, bytes, int], bool] = {}
        unsigned: dict[str, SignatureStatus] = {}  # per source, judged once per batch
        statuses: list[SignatureStatus] = []
        for event in events:
            if event.signature:
                statuses.append(await self._check(event, memo))
                continue
            source = event.source_domain
            status = unsigned.get(source)
            if status is None:
                status = unsigned[source] = _unsigned_status(await self._entry(source))
            statuses.append(status)
        return statuses

    async def _check(
        self, event: event_pb2.Event, memo: dict[tuple[str, bytes, bytes, int], bool]
    ) -> SignatureStatus:
        entry = await self._entry(event.source_domain)
        if event.signature and (entry.keys is None or event.signature_key_id not in entry.keys):
            # A key id the cache does not hold, or a signed event from a source cached as
            # having no key: the domain may have just registered or rotated its key.
            entry = await self._entry(event.source_domain, refresh=True)
        if entry.failed or not event.signature:
            return _unsigned_status(entry)
        key = (entry.keys or {}).get(event.signature_key_id)
        if key is None:
            return SignatureStatus.FORGED
        if not event.signature_batch_size:
            valid = verify_event(event, key)
        elif not event.id or not event.HasField("time"):
            valid = False
        else:
            valid = self._batch_valid(event, key, memo)
        return SignatureStatus.VALID if valid else SignatureStatus.FORGED

    def _batch_valid(
        self,
        event: event_pb2.Event,
        key: Ed25519PublicKey,
        memo: dict[tuple[str, bytes, bytes, int], bool],
    ) -> bool:
        root = batch_root(event)
        if root is None:
            return False
        group = (event.signature_key_id, event.signature, root, event.signature_batch_size)
        valid = memo.get(group)
        if valid is None:
            now = self.clock()
            verified_at = self._roots.get(group)
            if verified_at is not None and now - verified_at < self.root_ttl_s:
                valid = True
            else:
                message = batch_signing_bytes(root, event.signature_batch_size)
                valid = verify_with(key, message, event.signature)
                if valid:
                    self._remember_root(group, now)
            memo[group] = valid
        return valid

    def _remember_root(self, group: tuple[str, bytes, bytes, int], now: float) -> None:
        roots = self._roots
        roots.pop(group, None)
        roots[group] = now
        while len(roots) > self.max_roots:
            del roots[next(iter(roots))]  # insertion order: the oldest first

    async def enforce(self, event: event_pb2.Event) -> SignatureStatus | None:
        """Checks per the mode; None when off.

        Raises:
            PermissionDenied: in reject mode, for an unsigned event from a source with a key
                or a forged signature.
        """
        if self.mode == "off":
            return None
        status = await self.check(event)
        denial = self._apply(event, status)
        if denial is not None:
            raise denial
        return status

    async def enforce_batch(
        self, events: Sequence[event_pb2.Event]
    ) -> list[PermissionDenied | None]:
        """Checks every event per the mode: the refusal of each event, None where accepted.

        Each event is judged on its own (a forged event does not sink its batch); signed
        batches cost one signature verification (see `check_batch`).
        """
        if self.mode == "off":
            return [None] * len(events)
        # The statuses as `check_batch` finds them, in the same pass as the judgements.
        memo: dict[tuple[str, bytes, bytes, int], bool] = {}
        unsigned: dict[str, SignatureStatus] = {}  # per source, judged once per batch
        # An accepted event's judgement depends only on its source and status (and the
        # caller, fixed for the call): judged once per pair, then only counted (here, and
        # added to `counts` once at the end). Refusals and flagged events name the event,
        # so each is judged on its own.
        # Keyed by source, the status compared by identity: hashing an Enum member runs a
        # Python-level __hash__, once per event in a (source, status) key.
        accepted: dict[str, tuple[SignatureStatus, str]] = {}
        tally: dict[str, int] = {}
        denials: list[PermissionDenied | None] = []
        for event in events:
            source = event.source_domain
            if event.signature:
                status = await self._check(event, memo)
            else:
                found = unsigned.get(source)
                if found is None:
                    found = unsigned[source] = _unsigned_status(await self._entry(source))
                status = found
            judged = accepted.get(source)
            if judged is not None and judged[0] is status:
                tally[judged[1]] = tally.get(judged[1], 0) + 1
                denials.append(None)
                continue
            denial = self._apply(event, status)
            denials.append(denial)
            if not status.violation:
                accepted[source] = (status, status.value)
            elif status is SignatureStatus.UNSIGNED and denial is None and self.vouched_for(event):
                accepted[source] = (status, "unsigned_authenticated")
        counts = self.counts
        for key, times in tally.items():
            counts[key] += times
        return denials

    def vouched_for(self, event: event_pb2.Event) -> bool:
        """True when the caller vouches for the unsigned event's source."""
        return self.vouched is not None and self.vouched(event)

    def _apply(self, event: event_pb2.Event, status: SignatureStatus) -> PermissionDenied | None:
        if status is SignatureStatus.UNSIGNED and self.vouched_for(event):
            self.counts["unsigned_authenticated"] += 1
            return None
        self.counts[status.value] += 1
        if not status.violation:
            return None
        if self.mode == "reject":
            source = event.source_domain
            why = (
                f"it is unsigned, but {source!r} has a registered identity: events from "
                f"{source!r} must be signed with its active key"
                if status is SignatureStatus.UNSIGNED
                else f"its signature (key {event.signature_key_id or 'none'}) does not verify "
                f"with the active key registered for {source!r} in the trust kernel"
            )
            return PermissionDenied(
                f"event {event.id!r} from {source!r} refused ({status.value}): {why}",
                reason=f"SIGNATURE_{status.name}",
                metadata={"source_domain": source, "signature": status.value},
            )
        log.warning(
            "event %s from %s: signature %s (flagged, accepted)",
            event.id,
            event.source_domain,
            status.value,
        )
        return None
