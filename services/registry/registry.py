"""The registry core: domains and leases in the database, mirrored in memory for reads.

Reads (get, list, find, capability map) are served from memory, so routing lookups cost
microseconds. Every write is a database transaction that reads the rows it changes there,
so any number of instances may share one PostgreSQL database (see `store.py` for the
revision counter, the leases on the database clock and the notifications). Each change
that matters to watchers (registration, status change, removal) gets the next registry
revision and goes into the change log; heartbeats that only renew a lease or refresh
metrics do not.

Memory follows the change log in revision order: an instance applies its own changes as
soon as they commit, and on PostgreSQL it reads every other instance's from the log when
notified (LISTEN/NOTIFY), after every reconnection, and once a second anyway, so a missed
notification delays a change but never leaves a gap. Watches replay from that mirror, so
`WatchDomains` sends the same changes in the same order from every instance. Lease
sweeping runs on one instance at a time (an advisory lock); a sweep reads the leases from
the database and writes each expiry once.

A registration, a deregistration or a status change, once begun, ends even when its caller
goes away (`runs_to_completion`): cut off between its commit and memory, it would leave
memory behind the database until the next change read the log (on SQLite, the next change
made here), so a domain deregistered would still be routed to while its retry said NotFound.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from services.common.completion import runs_to_completion
from services.common.errors import InvalidArgument, NotFound, PermissionDenied
from services.common.notifications import Listener
from services.common.pagination import decode_token, encode_token, page_size, take_page
from services.common.validation import require_id
from services.common.waiting import wait_for_event
from services.registry import ranking
from services.registry.model import (
    Change,
    ChangeKind,
    DomainRecord,
    DomainStatus,
    Instance,
    Metrics,
    Registration,
)
from services.registry.store import (
    CHANGES_CHANNEL,
    TOUCHES_CHANNEL,
    Loaded,
    RegistryStore,
    Writing,
)
from services.registry.validation import (
    CAPABILITY_PATTERN,
    MAX_CAPABILITY_LENGTH,
    validate_instance_id,
    validate_metrics,
    validate_registration,
)

log = logging.getLogger(__name__)

WATCH_BATCH = 500
# How often an instance reads the change log even without a notification (PostgreSQL).
FOLLOW_POLL_S = 1.0

Clock = Callable[[], float]
ChangeListener = Callable[[Change], Awaitable[None]]


@dataclass(frozen=True)
class RegisterOutcome:
    """What a registration did.

    Attributes:
        record: The stored record.
        created: True when the id was new.
        kept_fields: Fields the registration left empty that kept their earlier values.
        changed_fields: Fields whose value changed (an update only).
    """

    record: DomainRecord
    created: bool
    kept_fields: tuple[str, ...] = ()
    changed_fields: tuple[str, ...] = ()


# Optional fields of a registration, as RegisterDomainResponse names them.
MERGED_FIELDS = ("capabilities", "version", "metadata", "public_key", "lease_ttl")


def merge(existing: DomainRecord, reg: Registration) -> tuple[Registration, list[str]]:
    """A re-registration completed from the current record: every optional field the
    registration leaves empty keeps its current value. Returns it and the kept fields."""
    kept: list[str] = []
    changes: dict[str, object] = {}
    current = {
        "capabilities": existing.capabilities,
        "version": existing.version,
        "metadata": {k: v for k, v in existing.metadata.items() if k != OWNER_KEY},
        "public_key": existing.public_key,
        "lease_ttl": existing.lease_ttl_s,
    }
    sent = {
        "capabilities": reg.capabilities,
        "version": reg.version,
        "metadata": reg.metadata,
        "public_key": reg.public_key,
        "lease_ttl": reg.lease_ttl_s,
    }
    for name in MERGED_FIELDS:
        if not sent[name] and current[name]:
            kept.append(name)
            changes["lease_ttl_s" if name == "lease_ttl" else name] = current[name]
    return dataclasses.replace(reg, **changes), kept  # type: ignore[arg-type]


def changed_fields(before: DomainRecord | None, after: DomainRecord) -> list[str]:
    """The registration fields whose value differs between two records of one domain."""
    if before is None:
        return []
    names = ("host", "port", "capabilities", "version", "metadata", "public_key")
    changed = [n for n in names if getattr(before, n) != getattr(after, n)]
    if before.lease_ttl_s != after.lease_ttl_s:
        changed.append("lease_ttl")
    return changed


@dataclass(frozen=True)
class RegistrySettings:
    """Tunables of the registry core.

    Attributes:
        default_lease_ttl_s: Lease length when a registration does not ask for one.
        deregister_after_s: How long a lapsed lease is kept (UNHEALTHY) before removal.
        history: How many changes are kept for watches to resume from.
    """

    default_lease_ttl_s: float = 30.0
    deregister_after_s: float = 300.0
    history: int = 10_000


@dataclass(frozen=True)
class WatchBatch:
    """One message of a watch: changes in revision order, and the revision reached."""

    changes: list[Change]
    revision: int
    reset: bool = False


@dataclass(frozen=True)
class RegistryStats:
    """Counts for GetRegistryStats."""

    total: int
    by_status: dict[str, int]
    by_capability: dict[str, int]
    revision: int
    leases_expired: int
    domains_reaped: int


class Registry:
    """Domains, leases and watches.

    Args:
        store: Durable state.
        settings: Lease and history tunables.
        clock: Returns epoch seconds for leases; injectable so tests can move time. By
            default the database's clock on PostgreSQL (instances on hosts whose clocks
            differ agree on leases) and the local one on SQLite.
    """

    def __init__(
        self,
        store: RegistryStore,
        settings: RegistrySettings | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.store = store
        if clock is not None:
            store.clock = clock
        self.settings = settings or RegistrySettings()
        store.deregister_after_s = self.settings.deregister_after_s
        self._records: dict[str, DomainRecord] = {}
        self._by_capability: dict[str, set[str]] = collections.defaultdict(set)
        self._history: collections.deque[Change] = collections.deque(maxlen=self.settings.history)
        self._revision = 0
        self._lock = asyncio.Lock()
        self._follow_lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._closing = False
        self._listeners: list[ChangeListener] = []
        self._leases_expired = 0
        self._domains_reaped = 0
        self._wake_follower = asyncio.Event()
        self._touched: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self.listener: Listener | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Loads persisted state and, on PostgreSQL, starts following the other instances.

        Leases that lapsed while no instance ran get one TTL of grace from now: their
        domains could not heartbeat an absent registry. An instance that starts beside
        running ones grants none.
        """
        await self.store.open()
        renewed = await self.store.grant_grace()
        self._reset(await self.store.load(self.settings.history))
        if renewed:
            log.info("registry: %d leases that lapsed while down renewed", len(renewed))
        log.info("registry loaded %d domains at revision %d", len(self._records), self._revision)
        if self.store.shared:
            self.listener = Listener(
                self.store.db,
                [CHANGES_CHANNEL, TOUCHES_CHANNEL],
                self._on_notification,
                self._on_listening,
            )
            self._tasks = [
                asyncio.create_task(self.listener.run(), name="registry-listener"),
                asyncio.create_task(self._follow_forever(), name="registry-follower"),
            ]
            if not await wait_for_event(self.listener.connected, 10.0):
                log.warning("registry: not yet listening for other instances' changes")

    async def close(self) -> None:
        """Ends every watch and stops following; the store stays open until `store.close`."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        async with self._changed:
            self._changed.notify_all()

    def add_listener(self, listener: ChangeListener) -> None:
        """Calls `listener` after each change this instance persisted (lifecycle events)."""
        self._listeners.append(listener)

    # -- writes ----------------------------------------------------------------------

    async def register(
        self, registration: Registration, owner: str = "", *, replace: bool = False
    ) -> tuple[DomainRecord, bool]:
        """Registers or updates a domain; returns the record and whether it is new
        (`registered` tells more)."""
        outcome = await self.registered(registration, owner, replace=replace)
        return outcome.record, outcome.created

    @runs_to_completion
    async def registered(
        self, registration: Registration, owner: str = "", *, replace: bool = False
    ) -> RegisterOutcome:
        """Registers or updates a domain and reports what changed.

        An update keeps every optional field the registration leaves empty (capabilities,
        version, metadata, public key, lease TTL) unless `replace` is set; see `merge`.

        Args:
            registration: What to register.
            owner: The authenticated principal registering ("" when security is off).
                A new record is bound to it (metadata `grace.owner`); only that principal
                may update, heartbeat or deregister the record afterwards.
            replace: Replace the record whole instead of merging it.
        """
        reg = validate_registration(registration)
        kept: list[str] = []
        async with self._lock:
            async with self.store.writing() as tx:
                now = tx.now
                existing = await tx.get(reg.domain_id)
                if existing is not None:
                    require_owner(existing, owner, "register")
                    if not replace:
                        reg, kept = merge(existing, reg)
                # The owner binding is the registry's, never the caller's: a new dict,
                # since a merged registration shares the stored record's metadata.
                metadata = {k: v for k, v in reg.metadata.items() if k != OWNER_KEY}
                bound = existing.metadata.get(OWNER_KEY, "") if existing is not None else ""
                if bound or owner:
                    metadata[OWNER_KEY] = bound or owner
                reg = dataclasses.replace(reg, metadata=metadata)
                ttl = reg.lease_ttl_s or self.settings.default_lease_ttl_s
                # The registering instance (re)starts its lease; the domain's others keep
                # theirs. The domain's attributes are shared: this registration sets them.
                joining = Instance(
                    instance_id=reg.instance_id,
                    host=reg.host,
                    port=reg.port,
                    status=DomainStatus.HEALTHY,
                    metrics=Metrics(),
                    last_heartbeat_at=now,
                    lease_expires_at=now + ttl,
                )
                others = tuple(
                    i
                    for i in (existing.instances if existing else ())
                    if i.instance_id != reg.instance_id
                )
                record = DomainRecord(
                    domain_id=reg.domain_id,
                    host=reg.host,
                    port=reg.port,
                    capabilities=reg.capabilities,
                    version=reg.version,
                    metadata=reg.metadata,
                    public_key=reg.public_key,
                    lease_ttl_s=ttl,
                    status=DomainStatus.HEALTHY,
                    metrics=existing.metrics if existing else Metrics(),
                    registered_at=existing.registered_at if existing else now,
                    last_heartbeat_at=now,
                    lease_expires_at=now + ttl,
                    revision=tx.next_revision(),
                ).with_instances((*others, joining))
                kind = ChangeKind.UPDATED if existing else ChangeKind.REGISTERED
                await tx.add(Change(record.revision, kind, record))
            await self._committed(tx)
        if kept:
            log.info("registry: %s re-registered; kept its %s", reg.domain_id, ", ".join(kept))
        return RegisterOutcome(
            record, existing is None, tuple(kept), tuple(changed_fields(existing, record))
        )

    async def heartbeat(
        self,
        domain_id: str,
        metrics: Metrics | None = None,
        degraded: bool = False,
        owner: str = "",
        instance_id: str = "",
    ) -> DomainRecord:
        """Renews an instance's lease, records its metrics, and moves its status (and the
        domain's) if it changed.

        `owner` is the authenticated caller ("" when security is off): it must be the
        principal the record is bound to. `instance_id` names the instance ("" the
        default one); NotFound when it is not registered.
        """
        require_id("domain_id", domain_id)
        validate_instance_id(instance_id)
        if metrics is not None:
            metrics = validate_metrics(metrics)
        status = DomainStatus.DEGRADED if degraded else DomainStatus.HEALTHY

        def renewed(current: DomainRecord, now: float) -> DomainRecord:
            require_owner(current, owner, "heartbeat for")
            instance = current.instance(instance_id)
            if instance is None:
                raise NotFound("instance", f"{domain_id}/{instance_id}")
            instance = instance.with_changes(
                metrics=metrics or instance.metrics,
                last_heartbeat_at=now,
                lease_expires_at=now + current.lease_ttl_s,
                status=status,
            )
            others = tuple(i for i in current.instances if i.instance_id != instance_id)
            return current.with_instances((*others, instance))

        # The common case: every status stays, a renewed lease without a revision.
        # PostgreSQL's row lock orders it against the other writes; SQLite's one writer
        # is this process.
        def same_status(current: DomainRecord, now: float) -> DomainRecord | None:
            record = renewed(current, now)
            before = current.instance(instance_id)
            if before is None or before.status is not status:
                return None
            return record if record.status is current.status else None

        async with contextlib.nullcontext() if self.store.shared else self._lock:
            fast = await self.store.renew(domain_id, same_status)
        if fast is not None:
            self._refresh(fast)
            return fast
        return await self._move_status(domain_id, instance_id, status, renewed)

    @runs_to_completion
    async def _move_status(
        self,
        domain_id: str,
        instance_id: str,
        status: DomainStatus,
        renewed: Callable[[DomainRecord, float], DomainRecord],
    ) -> DomainRecord:
        """A heartbeat that moves an instance's status: a revision of its own. Only this
        path runs as a task of its own; the common renewal only lags in lease times, which
        the next heartbeat brings into memory."""
        async with self._lock:
            async with self.store.writing() as tx:
                current = await tx.require(domain_id)
                record = renewed(current, tx.now)
                before = current.instance(instance_id)
                if before is not None and before.status is status:
                    # Another instance moved it back meanwhile.
                    await tx.touch(record)
                else:
                    # The instance's status moved; the domain's may not have (another
                    # instance still stands for it): then it is an update of the domain.
                    record = record.with_changes(revision=tx.next_revision())
                    moved = record.status is not current.status
                    kind = ChangeKind.STATUS_CHANGED if moved else ChangeKind.UPDATED
                    await tx.add(Change(record.revision, kind, record))
            await self._committed(tx)
            self._refresh(record)
        return record

    @runs_to_completion
    async def deregister(
        self, domain_id: str, owner: str = "", admin: bool = False, instance_id: str = ""
    ) -> int:
        """Removes a domain, or one of its instances; returns the revision of the removal.

        Only the principal the record is bound to may remove it, or an admin (`admin`),
        to clear a record whose owner is gone; "" (security off) skips the check. With
        `instance_id`, only that instance goes (an UPDATED change), and the domain with
        its last instance.
        """
        require_id("domain_id", domain_id)
        validate_instance_id(instance_id)
        async with self._lock:
            async with self.store.writing() as tx:
                current = await tx.require(domain_id)
                if not admin:
                    require_owner(current, owner, "deregister")
                revision = tx.next_revision()
                others = tuple(i for i in current.instances if i.instance_id != instance_id)
                if instance_id and len(others) == len(current.instances):
                    raise NotFound("instance", f"{domain_id}/{instance_id}")
                if instance_id and others:
                    record = current.with_instances(others).with_changes(revision=revision)
                    await tx.add(Change(revision, ChangeKind.UPDATED, record))
                else:
                    record = current.with_changes(revision=revision)
                    await tx.add(Change(revision, ChangeKind.REMOVED, record))
            await self._committed(tx)
            return record.revision

    async def sweep(self) -> list[Change]:
        """Marks lapsed leases UNHEALTHY and removes domains past the grace period.

        On PostgreSQL one instance sweeps at a time; the others' sweeps return nothing.
        The leases are read from the database, so a heartbeat to any instance counts.
        """
        async with self._lock:
            async with self.store.sweeping() as tx:
                if tx is None:
                    return []
                for record in await tx.lapsed():
                    change = self._swept(record, tx.now, tx.next_revision())
                    if change is None:
                        await tx.touch(record)  # Only its due time was stale.
                    else:
                        await tx.add(change)
            pending = tx.changes
            await self._committed(tx)
        self._leases_expired += sum(c.kind is not ChangeKind.REMOVED for c in pending)
        self._domains_reaped += sum(c.kind is ChangeKind.REMOVED for c in pending)
        for change in pending:
            log.info(
                "domain %s: %s",
                change.record.domain_id,
                "removed after grace period"
                if change.kind is ChangeKind.REMOVED
                else f"instance leases lapsed or removed; {len(change.record.live_instances)} live",
            )
        return pending

    def _swept(self, record: DomainRecord, now: float, revision: int) -> Change | None:
        """What the sweep does to one record: instances whose lease lapsed become
        UNHEALTHY, and those lapsed past the grace period are removed. The domain goes
        UNHEALTHY with its last live instance (STATUS_CHANGED) and is removed with its
        last instance (REMOVED); an instance lapsing or going while others serve is an
        UPDATED change. None when nothing is due."""
        grace = self.settings.deregister_after_s
        kept: list[Instance] = []
        for instance in record.instances:
            if instance.status.is_live and instance.lease_expires_at <= now:
                kept.append(instance.with_changes(status=DomainStatus.UNHEALTHY))
            elif not instance.status.is_live and instance.lease_expires_at + grace <= now:
                continue
            else:
                kept.append(instance)
        if not kept:
            return Change(revision, ChangeKind.REMOVED, record.with_changes(revision=revision))
        after = record.with_instances(tuple(kept))
        if after.instances == record.instances:
            return None
        after = after.with_changes(revision=revision)
        changed = after.status is not record.status
        kind = ChangeKind.STATUS_CHANGED if changed else ChangeKind.UPDATED
        return Change(revision, kind, after)

    async def run_sweeper(self, interval_s: float) -> None:
        """Sweeps every `interval_s` until cancelled; trims the change log now and then."""
        sweeps = 0
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sweep()
                sweeps += 1
                if sweeps % 60 == 0 and self._revision > self.settings.history:
                    await self.store.trim_changes(self._revision - self.settings.history)
            except Exception:
                log.exception("registry sweep failed; retrying next interval")

    # -- following the change log ------------------------------------------------------

    async def _committed(self, tx: Writing) -> None:
        """Brings memory up to a transaction this instance committed, then tells the
        listeners. Memory only moves after the commit: a failed write leaves it as it was."""
        if not tx.changes:
            return
        async with self._follow_lock:
            pending = [c for c in tx.changes if c.revision > self._revision]
            if pending and pending[0].revision == self._revision + 1:
                await self._accept(pending)
            elif pending:  # Another instance's changes came first: read them in order.
                await self._catch_up_locked()
        for change in tx.changes:
            for listener in self._listeners:
                try:
                    await listener(change)
                except Exception:
                    log.exception("registry change listener failed")

    async def _accept(self, changes: list[Change]) -> None:
        for change in changes:
            if change.kind is ChangeKind.REMOVED:
                self._unindex(change.record.domain_id)
            else:
                self._index(change.record)
            self._history.append(change)
        self._revision = changes[-1].revision
        async with self._changed:
            self._changed.notify_all()

    async def catch_up(self) -> None:
        """Reads the changes other instances logged since the last one applied here."""
        async with self._follow_lock:
            await self._catch_up_locked()

    async def _catch_up_locked(self) -> None:
        while True:
            changes = await self.store.changes_after(self._revision, WATCH_BATCH)
            if not changes:
                return
            if changes[0].revision != self._revision + 1:
                # The log was trimmed past this instance (it was stuck for long): start
                # over from the stored state; watchers that fell behind get a snapshot.
                log.warning(
                    "registry: change log trimmed past revision %d; reloading", self._revision
                )
                self._reset(await self.store.load(self.settings.history))
                async with self._changed:
                    self._changed.notify_all()
                return
            await self._accept(changes)
            if len(changes) < WATCH_BATCH:
                return

    def _reset(self, loaded: Loaded) -> None:
        self._records.clear()
        self._by_capability.clear()
        for record in loaded.records:
            self._index(record)
        self._history.clear()
        self._history.extend(loaded.recent_changes)
        self._revision = loaded.revision

    def _refresh(self, record: DomainRecord) -> None:
        """Takes a renewed lease and metrics into memory, unless memory has not reached the
        record's revision yet (the change log brings that first)."""
        known = self._records.get(record.domain_id)
        if known is not None and known.revision == record.revision:
            self._index(record)

    def _on_notification(self, channel: str, payload: str) -> None:
        if channel == TOUCHES_CHANNEL:
            self._touched.add(payload)
        self._wake_follower.set()

    async def _on_listening(self, conn: object) -> None:
        await self.store.hold_alive_lock(conn)
        self._wake_follower.set()  # Notifications sent while disconnected are gone.

    async def _follow_forever(self) -> None:
        failing = False
        while True:
            await wait_for_event(self._wake_follower, FOLLOW_POLL_S)
            self._wake_follower.clear()
            try:
                await self.catch_up()
                touched, self._touched = self._touched, set()
                for record in await self.store.records(sorted(touched)):
                    self._refresh(record)
            except Exception as exc:
                # Logged when the outage begins and when it ends, not every second.
                if not failing:
                    log.warning("registry: cannot read other instances' changes (%s)", exc)
                failing = True
                continue
            if failing:
                log.info("registry: following other instances' changes again")
                failing = False

    def _index(self, record: DomainRecord) -> None:
        old = self._records.get(record.domain_id)
        if old is not None:
            for capability in old.capabilities:
                self._by_capability[capability].discard(record.domain_id)
        self._records[record.domain_id] = record
        for capability in record.capabilities:
            self._by_capability[capability].add(record.domain_id)

    def _unindex(self, domain_id: str) -> None:
        old = self._records.pop(domain_id, None)
        if old is not None:
            for capability in old.capabilities:
                holders = self._by_capability[capability]
                holders.discard(domain_id)
                if not holders:
                    del self._by_capability[capability]

    # -- reads -----------------------------------------------------------------------

    @property
    def revision(self) -> int:
        """The current registry revision."""
        return self._revision

    def _get(self, domain_id: str) -> DomainRecord:
        record = self._records.get(domain_id)
        if record is None:
            raise NotFound("domain", domain_id)
        return record

    def get(self, domain_id: str) -> DomainRecord:
        """One domain, or NotFound."""
        require_id("domain_id", domain_id)
        return self._get(domain_id)

    async def lookup(self, domain_id: str) -> DomainRecord:
        """`get`, but a domain missing here is looked for in the change log first: it may
        have been registered on another instance a moment ago (PostgreSQL)."""
        require_id("domain_id", domain_id)
        if domain_id not in self._records and self.store.shared:
            await self.catch_up()
        return self._get(domain_id)

    def list_domains(
        self,
        *,
        size: int = 0,
        token: str = "",
        status: DomainStatus | None = None,
        capability: str = "",
        size_of: Callable[[DomainRecord], int] = lambda _: 0,
    ) -> tuple[list[DomainRecord], str, int]:
        """A page of domains ordered by id; returns (page, next token, total matching).

        `size_of` tells a domain's encoded size in the reply; the page ends early rather
        than exceed `pagination.MAX_PAGE_BYTES`.
        """
        limit = page_size(size)
        position = decode_token(token)
        after = str(position.get("after", "")) if position else ""
        if capability:
            require_id(
                "capability",
                capability,
                max_length=MAX_CAPABILITY_LENGTH,
                pattern=CAPABILITY_PATTERN,
            )
            ids = self._by_capability.get(capability, set())
        else:
            ids = set(self._records)
        matching = sorted(i for i in ids if status is None or self._records[i].status is status)
        start = 0
        if after:
            start = bisect.bisect_right(matching, after)
        candidates = [self._records[i] for i in matching[start : start + limit + 1]]
        page, more = take_page(candidates, limit, size_of)
        next_token = encode_token({"after": page[-1].domain_id}) if more and page else ""
        return page, next_token, len(matching)

    def capability_map(self, include_unhealthy: bool = False) -> dict[str, list[str]]:
        """Capability -> sorted ids of the domains offering it."""
        result: dict[str, list[str]] = {}
        for capability, ids in self._by_capability.items():
            chosen = sorted(i for i in ids if include_unhealthy or self._records[i].status.is_live)
            if chosen:
                result[capability] = chosen
        return dict(sorted(result.items()))

    def find(self, capability: str, limit: int = 0) -> list[tuple[DomainRecord, float]]:
        """Live domains offering `capability` with their routing score, best first."""
        require_id(
            "capability", capability, max_length=MAX_CAPABILITY_LENGTH, pattern=CAPABILITY_PATTERN
        )
        if limit < 0 or limit > 1000:
            raise InvalidArgument("limit", "must be between 0 and 1000")
        ids = self._by_capability.get(capability, ())
        ranked = ranking.rank(self._records[i] for i in ids)
        return ranked[:limit] if limit else ranked

    def domain_count(self) -> int:
        """How many domains are registered."""
        return len(self._records)

    def stats(self) -> RegistryStats:
        """Counts by status and capability."""
        by_status = {status.value: 0 for status in DomainStatus}
        for record in self._records.values():
            by_status[record.status.value] += 1
        by_capability = {
            capability: sum(self._records[i].status.is_live for i in ids)
            for capability, ids in sorted(self._by_capability.items())
        }
        return RegistryStats(
            total=len(self._records),
            by_status=by_status,
            by_capability=by_capability,
            revision=self._revision,
            leases_expired=self._leases_expired,
            domains_reaped=self._domains_reaped,
        )

    # -- watches ---------------------------------------------------------------------

    def _can_replay_after(self, revision: int) -> bool:
        if revision == self._revision:
            return True
        if revision > self._revision or not self._history:
            return False
        return self._history[0].revision <= revision + 1

    def _changes_after(self, revision: int) -> list[Change]:
        start = revision + 1 - self._history[0].revision
        return [self._history[i] for i in range(start, len(self._history))]

    def _snapshot(self, reset: bool) -> list[WatchBatch]:
        records = sorted(self._records.values(), key=lambda r: r.domain_id)
        changes = [Change(self._revision, ChangeKind.SNAPSHOT, r) for r in records]
        chunks = [changes[i : i + WATCH_BATCH] for i in range(0, len(changes), WATCH_BATCH)]
        chunks = chunks or [[]]
        return [
            WatchBatch(chunk, self._revision, reset=reset and index == 0)
            for index, chunk in enumerate(chunks)
        ]

    async def _wait_for_change(self, seen: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._revision != seen or self._closing)

    async def watch(self, after_revision: int = 0) -> AsyncIterator[WatchBatch]:
        """A snapshot (or a replay after `after_revision`), then every change, until close.

        Memory stays bounded whatever the pace of the client: a watcher only remembers
        the last revision it sent and reads from the shared history, and one that fell
        further behind than the history holds gets a fresh snapshot with `reset`.
        """
        if after_revision < 0:
            raise InvalidArgument("after_revision", "must not be negative")
        if after_revision > self._revision and self.store.shared:
            # A revision another instance already served: read up to it before judging.
            await self.catch_up()
        last = after_revision
        if after_revision == 0 or not self._can_replay_after(after_revision):
            for batch in self._snapshot(reset=after_revision != 0):
                yield batch
            last = self._revision
        while not self._closing:
            if self._revision == last:
                await self._wait_for_change(last)
                continue
            if not self._can_replay_after(last):
                for batch in self._snapshot(reset=True):
                    yield batch
                last = self._revision
                continue
            pending = self._changes_after(last)[:WATCH_BATCH]
            last = pending[-1].revision
            yield WatchBatch(pending, last)


OWNER_KEY = "grace.owner"


def require_owner(record: DomainRecord, caller: str, action: str) -> None:
    """Raises PermissionDenied unless `caller` is the principal `record` is bound to.

    A record without an owner (registered with security off) and a caller "" (security
    off) are not checked.
    """
    bound = record.metadata.get(OWNER_KEY, "")
    if bound and caller and caller != bound:
        raise PermissionDenied(
            f"domain_id={record.domain_id!r} is bound to {bound}; {caller} may not {action} it"
        )
