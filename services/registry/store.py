"""Durable state of the registry: domain records, leases, the change log and the revision.

The database is the registry's truth, so several instances can share one PostgreSQL
database; each keeps a copy in memory for reads and follows the change log (see
`registry.py`). Three rules make that safe:

- **The revision is a counter row, not a sequence.** Every write that makes revisions
  (`Writing`) locks the `registry_state` row first and bumps it in the same transaction,
  so writers are serialized, revisions have no gaps, and they become visible in the order
  they were given. A sequence would hand out numbers outside the transaction: a rolled
  back write leaves a gap, and a later revision can commit before an earlier one, so a
  watcher that read up to 12 would never see 11. `WatchDomains` needs "every revision
  after n, in order", which only the counter row gives.
- **Leases live in the rows** and expire on the database's clock (PostgreSQL's
  `clock_timestamp()`), so a heartbeat to any instance renews the lease and hosts whose
  clocks differ agree on when it lapses.
- **Changes are announced with NOTIFY** in the transaction that writes them
  (`registry_changes`, the revision; `registry_touches`, a domain whose lease or metrics
  were renewed without a revision). PostgreSQL delivers a notification only after its
  transaction committed, so a listener that reads the log after it always finds the change.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Float,
    delete,
    func,
    inspect,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.errors import NotFound
from services.common.outbox import Outbox
from services.common.storage import Database
from services.registry.model import (
    Change,
    ChangeKind,
    DomainRecord,
    DomainStatus,
    Instance,
    Metrics,
)
from services.registry.tables import (
    ADDED_COLUMNS,
    changes,
    domains,
    incarnations,
    metadata,
    outbox,
    state,
    suspicions,
)

EVENT_TYPES = {
    ChangeKind.REGISTERED: "domain.registered",
    ChangeKind.UPDATED: "domain.updated",
    ChangeKind.STATUS_CHANGED: "domain.status_changed",
    ChangeKind.REMOVED: "domain.removed",
}


CHANGES_CHANNEL = "registry_changes"
TOUCHES_CHANNEL = "registry_touches"

# Advisory lock keys, per schema so registries in different schemas of one database (tests)
# never wait for each other. The sweep lock lets one instance sweep at a time; every
# running instance holds the alive lock shared, so one that gets it exclusively knows it is
# the only instance (the registry was down).
_SWEEP_LOCK = "hashtext(current_schema() || '/registry-sweep')"
_ALIVE_LOCK = "hashtext(current_schema() || '/registry-alive')"

Clock = Callable[[], float]


@dataclass(frozen=True)
class Loaded:
    """Everything the registry needs to resume after a restart."""

    records: list[DomainRecord]
    revision: int
    recent_changes: list[Change]


def _row(record: DomainRecord, deregister_after_s: float) -> dict[str, object]:
    return {
        "domain_id": record.domain_id,
        "host": record.host,
        "port": record.port,
        "capabilities": list(record.capabilities),
        "version": record.version,
        "metadata": record.metadata,
        "public_key": record.public_key,
        "lease_ttl_s": record.lease_ttl_s,
        "status": record.status.value,
        "load": record.metrics.load,
        "latency_ms": record.metrics.latency_ms,
        "success_rate": record.metrics.success_rate,
        "registered_at": record.registered_at,
        "last_heartbeat_at": record.last_heartbeat_at,
        "lease_expires_at": record.lease_expires_at,
        "revision": record.revision,
        "instances": [i.to_json() for i in record.instances],
        "sweep_due_at": record.sweep_due_at(deregister_after_s),
    }


def _record(row: object) -> DomainRecord:
    m = row._mapping  # type: ignore[attr-defined]  # SQLAlchemy Row
    return DomainRecord(
        domain_id=m["domain_id"],
        host=m["host"],
        port=m["port"],
        capabilities=tuple(m["capabilities"]),
        version=m["version"],
        metadata=dict(m["metadata"]),
        public_key=bytes(m["public_key"]),
        lease_ttl_s=m["lease_ttl_s"],
        status=DomainStatus(m["status"]),
        metrics=Metrics(m["load"], m["latency_ms"], m["success_rate"]),
        registered_at=m["registered_at"],
        last_heartbeat_at=m["last_heartbeat_at"],
        lease_expires_at=m["lease_expires_at"],
        revision=m["revision"],
        instances=tuple(Instance.from_json(i) for i in m["instances"] or ()),
    ).with_default_instance()


class Writing:
    """One transaction that makes registry revisions.

    The revision counter stays locked until the transaction ends, so writers on every
    instance take turns and each reads the rows as the previous writer left them. Changes
    added here are written at once (a later `get` in the same transaction sees them); the
    counter and the notification follow when the transaction ends.

    Attributes:
        revision: The last committed revision when the transaction began.
        now: The time of the transaction (the database's clock on PostgreSQL).
    """

    def __init__(self, store: RegistryStore, conn: AsyncConnection, revision: int, now: float):
        self._store = store
        self.conn = conn
        self.revision = revision
        self.now = now
        self.changes: list[Change] = []

    def next_revision(self) -> int:
        """The revision the next added change must carry."""
        return self.revision + len(self.changes) + 1

    async def get(self, domain_id: str) -> DomainRecord | None:
        """The stored record of `domain_id`, locked until the end of the transaction."""
        row = (
            await self.conn.execute(
                select(domains).where(domains.c.domain_id == domain_id).with_for_update()
            )
        ).first()
        return _record(row) if row is not None else None

    async def require(self, domain_id: str) -> DomainRecord:
        """`get`, or NotFound."""
        record = await self.get(domain_id)
        if record is None:
            raise NotFound("domain", domain_id)
        return record

    async def lapsed(self) -> list[DomainRecord]:
        """Records on which the sweep has work (an instance's lease lapsed, or a lapsed
        one's grace period ended; see `DomainRecord.sweep_due_at`), by id, locked (a
        heartbeat committing meanwhile takes its record out of the answer). Rows written
        before the due time existed are read once, and get one when touched."""
        rows = await self.conn.execute(
            select(domains)
            .where(or_(domains.c.sweep_due_at.is_(None), domains.c.sweep_due_at <= self.now))
            .order_by(domains.c.domain_id)
            .with_for_update()
        )
        return [_record(r) for r in rows]

    async def touch(self, record: DomainRecord) -> None:
        """Writes a renewed lease and metrics that make no revision."""
        await _write_lease(self.conn, record, self._store.deregister_after_s)
        await self._store._notify(self.conn, TOUCHES_CHANNEL, record.domain_id)

    async def add(self, change: Change) -> None:
        """Writes one change: the record, the change log and its event."""
        if change.revision != self.next_revision():
            raise ValueError(f"change at revision {change.revision}; {self.next_revision()} is due")
        await self._store._apply_one(self.conn, change)
        self.changes.append(change)


class RegistryStore:
    """Reads and writes registry state; every write is one transaction.

    Args:
        db: The database to use.
        clock: Epoch seconds for leases; None uses the database's clock on PostgreSQL
            and the local one on SQLite. Tests inject a manual clock.
    """

    def __init__(self, db: Database, clock: Clock | None = None) -> None:
        self.db = db
        self.clock = clock
        self.outbox = Outbox(db, outbox, "registry")
        # The registry's grace period for lapsed instances, for the sweep's due times
        # (the Registry sets its own).
        self.deregister_after_s = 300.0

    @property
    def shared(self) -> bool:
        """True when several instances may use the database (PostgreSQL)."""
        return not self.db.is_sqlite

    async def open(self) -> None:
        """Creates the tables if they are missing, and the revision counter."""
        await self.db.create_tables(metadata)
        await self._add_missing_columns()
        async with self.db.transaction() as conn:
            latest = (await conn.execute(select(func.max(changes.c.revision)))).scalar()
            stmt = self.db.insert(state).values(key="revision", value=int(latest or 0))
            await conn.execute(stmt.on_conflict_do_nothing(index_elements=[state.c.key]))

    async def _add_missing_columns(self) -> None:
        """Adds the columns that came after a table was first created (`ADDED_COLUMNS`),
        all nullable, to a database that lacks them."""
        async with self.db.engine.begin() as conn:
            if self.shared:
                await conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7471826)")
            for table, names in ADDED_COLUMNS.items():

                def columns(sync: Any, name: str = table.name) -> set[str]:
                    return {c["name"] for c in inspect(sync).get_columns(name)}

                present = await conn.run_sync(columns)
                for name in names:
                    if name not in present:
                        column = table.c[name]
                        kind = column.type.compile(dialect=conn.dialect)
                        await conn.exec_driver_sql(
                            f"ALTER TABLE {table.name} ADD COLUMN {name} {kind}"
                        )

    async def close(self) -> None:
        """Closes the database."""
        await self.db.close()

    async def _now(self, conn: AsyncConnection) -> float:
        if self.clock is not None:
            return self.clock()
        if self.db.is_sqlite:
            return time.time()
        return float(
            (await conn.execute(text("SELECT extract(epoch FROM clock_timestamp())"))).scalar_one()
        )

    async def load(self, history: int) -> Loaded:
        """Every record, the revision, and up to `history` most recent changes, as of one
        revision (the counter is read-locked meanwhile, so no writer slips in between)."""
        async with self.db.transaction() as conn:
            revision = (
                await conn.execute(
                    select(state.c.value)
                    .where(state.c.key == "revision")
                    .with_for_update(read=True)
                )
            ).scalar_one_or_none() or 0
            records = [_record(r) for r in await conn.execute(select(domains))]
            rows = await conn.execute(
                select(changes).order_by(changes.c.revision.desc()).limit(history)
            )
            recent = [_change(r) for r in rows]
        recent.reverse()
        return Loaded(records, revision, recent)

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[Writing]:
        """A transaction that makes revisions (see `Writing`); committed on exit."""
        async with self.db.transaction() as conn:
            writing = await self._begin_writing(conn)
            yield writing
            await self._end_writing(writing)

    @asynccontextmanager
    async def sweeping(self) -> AsyncIterator[Writing | None]:
        """`writing` for the lease sweep, or None while another instance sweeps: the
        sweep runs under a transaction-scoped advisory lock, one instance at a time."""
        async with self.db.transaction() as conn:
            if self.shared:
                taken = (
                    await conn.execute(text(f"SELECT pg_try_advisory_xact_lock({_SWEEP_LOCK})"))
                ).scalar_one()
                if not taken:
                    yield None
                    return
            writing = await self._begin_writing(conn)
            yield writing
            await self._end_writing(writing)

    async def _begin_writing(self, conn: AsyncConnection) -> Writing:
        revision = (
            await conn.execute(
                select(state.c.value).where(state.c.key == "revision").with_for_update()
            )
        ).scalar_one()
        return Writing(self, conn, int(revision), await self._now(conn))

    async def _end_writing(self, writing: Writing) -> None:
        if not writing.changes:
            return
        last = writing.changes[-1].revision
        await writing.conn.execute(
            update(state).where(state.c.key == "revision").values(value=last)
        )
        await self._notify(writing.conn, CHANGES_CHANNEL, str(last))

    async def _notify(self, conn: AsyncConnection, channel: str, payload: str) -> None:
        if self.shared:
            await conn.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": channel, "payload": payload},
            )

    async def _apply_one(self, conn: AsyncConnection, change: Change) -> None:
        record = change.record
        if change.kind is ChangeKind.REMOVED:
            await conn.execute(delete(domains).where(domains.c.domain_id == record.domain_id))
            # A domain that left takes its federation state with it.
            await conn.execute(
                delete(suspicions).where(suspicions.c.suspect_id == record.domain_id)
            )
            await conn.execute(
                delete(incarnations).where(incarnations.c.domain_id == record.domain_id)
            )
        else:
            row = _row(record, self.deregister_after_s)
            stmt = self.db.insert(domains).values(**row)
            stmt = stmt.on_conflict_do_update(
                index_elements=[domains.c.domain_id],
                set_={k: v for k, v in row.items() if k != "domain_id"},
            )
            await conn.execute(stmt)
        await conn.execute(
            changes.insert().values(
                revision=change.revision,
                kind=change.kind.value,
                domain_id=record.domain_id,
                record=record.to_json(),
            )
        )
        event_type = EVENT_TYPES.get(change.kind)
        if event_type is not None:
            await self.outbox.enqueue(
                conn,
                event_type,
                {
                    "domain_id": record.domain_id,
                    "address": record.address,
                    "capabilities": list(record.capabilities),
                    "status": record.status.value,
                    "revision": change.revision,
                    "instances": [
                        {
                            "instance_id": i.instance_id,
                            "address": i.address,
                            "status": i.status.value,
                        }
                        for i in record.instances
                    ],
                },
                subject=record.domain_id,
            )

    async def renew(
        self, domain_id: str, renewal: Callable[[DomainRecord, float], DomainRecord | None]
    ) -> DomainRecord | None:
        """A heartbeat that changes no status: renews a lease and records the metrics
        without a new revision. `renewal` makes the renewed record from the stored one at
        a time, or returns None when the heartbeat needs a revision (the caller then makes
        it with `writing`), and may raise to undo the renewal (a caller that is not the
        owner). None too when the record is missing."""
        # Two statements, the heartbeat being the registry's hottest write: the row is
        # read locked with the database's time, and written with the notification.
        database_time = self.clock is None and self.shared
        read = select(domains).where(domains.c.domain_id == domain_id).with_for_update()
        if database_time:
            read = read.add_columns(
                literal_column("extract(epoch FROM statement_timestamp())", Float).label("now")
            )
        async with self.db.transaction() as conn:
            row = (await conn.execute(read)).first()
            if row is None:
                return None
            now = float(row.now) if database_time else (self.clock or time.time)()
            record = renewal(_record(row), now)
            if record is None:
                return None
            await _write_lease(conn, record, self.deregister_after_s, notify=self.shared)
            return record

    async def grant_grace(self) -> list[DomainRecord]:
        """Renews, from now, the live instances' leases that lapsed while no registry
        instance was running (their domains could not heartbeat an absent registry);
        nothing while another instance runs. Returns the renewed records."""
        async with self.db.transaction() as conn:
            if self.shared:
                alone = (
                    await conn.execute(text(f"SELECT pg_try_advisory_xact_lock({_ALIVE_LOCK})"))
                ).scalar_one()
                if not alone:
                    return []
            now = await self._now(conn)
            rows = await conn.execute(
                select(domains)
                .where(
                    domains.c.status != DomainStatus.UNHEALTHY.value,
                    or_(domains.c.sweep_due_at.is_(None), domains.c.sweep_due_at < now),
                )
                .with_for_update()
            )
            renewed: list[DomainRecord] = []
            for stored in [_record(r) for r in rows]:
                instances = tuple(
                    i.with_changes(lease_expires_at=now + stored.lease_ttl_s)
                    if i.status.is_live and i.lease_expires_at < now
                    else i
                    for i in stored.instances
                )
                record = stored.with_instances(instances)
                await _write_lease(conn, record, self.deregister_after_s)
                renewed.append(record)
            return renewed

    async def hold_alive_lock(self, conn: object) -> None:
        """Takes the alive lock, shared, on a dedicated driver connection (held until it
        closes): while it is held, no other instance takes itself for the only one."""
        await conn.execute(f"SELECT pg_advisory_lock_shared({_ALIVE_LOCK})")  # type: ignore[attr-defined]  # asyncpg Connection

    async def changes_after(self, revision: int, limit: int) -> list[Change]:
        """Up to `limit` logged changes after `revision`, in order."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(changes)
                .where(changes.c.revision > revision)
                .order_by(changes.c.revision)
                .limit(limit)
            )
            return [_change(r) for r in rows]

    async def records(self, domain_ids: Sequence[str]) -> list[DomainRecord]:
        """The stored records of some domains (the missing ones are left out)."""
        if not domain_ids:
            return []
        async with self.db.read() as conn:
            rows = await conn.execute(select(domains).where(domains.c.domain_id.in_(domain_ids)))
            return [_record(r) for r in rows]

    async def trim_changes(self, keep_after_revision: int) -> int:
        """Deletes changes at or before a revision; returns how many went."""
        async with self.db.transaction() as conn:
            result = await conn.execute(
                delete(changes).where(changes.c.revision <= keep_after_revision)
            )
        return int(result.rowcount or 0)


async def _write_lease(
    conn: AsyncConnection, record: DomainRecord, grace_s: float, *, notify: bool = False
) -> None:
    """Writes what a heartbeat renews (leases, metrics, instances) without a revision;
    with `notify`, announces it on the touches channel in the same statement."""
    statement = (
        update(domains)
        .where(domains.c.domain_id == record.domain_id)
        .values(
            load=record.metrics.load,
            latency_ms=record.metrics.latency_ms,
            success_rate=record.metrics.success_rate,
            last_heartbeat_at=record.last_heartbeat_at,
            lease_expires_at=record.lease_expires_at,
            instances=[i.to_json() for i in record.instances],
            sweep_due_at=record.sweep_due_at(grace_s),
        )
    )
    if notify:
        statement = statement.returning(func.pg_notify(TOUCHES_CHANNEL, domains.c.domain_id))
    await conn.execute(statement)


def _change(row: object) -> Change:
    m = row._mapping  # type: ignore[attr-defined]  # SQLAlchemy Row
    return Change(m["revision"], ChangeKind(m["kind"]), DomainRecord.from_json(m["record"]))
