"""Durable state of the registry: domain records, the change log and the revision."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    delete,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.outbox import Outbox, outbox_table
from services.common.storage import Database
from services.registry.model import Change, ChangeKind, DomainRecord, DomainStatus, Metrics

metadata = MetaData()

domains = Table(
    "registry_domains",
    metadata,
    Column("domain_id", String(128), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("port", Integer, nullable=False),
    Column("capabilities", JSON, nullable=False),
    Column("version", String(64), nullable=False),
    Column("metadata", JSON, nullable=False),
    Column("public_key", LargeBinary, nullable=False),
    Column("lease_ttl_s", Float, nullable=False),
    Column("status", String(16), nullable=False),
    Column("load", Float, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("success_rate", Float, nullable=False),
    Column("registered_at", Float, nullable=False),
    Column("last_heartbeat_at", Float, nullable=False),
    Column("lease_expires_at", Float, nullable=False),
    Column("revision", BigInteger, nullable=False),
)

changes = Table(
    "registry_changes",
    metadata,
    Column("revision", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(16), nullable=False),
    Column("domain_id", String(128), nullable=False),
    Column("record", JSON, nullable=False),
)

state = Table(
    "registry_state",
    metadata,
    Column("key", String(32), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

# Lifecycle events for the bus, written in the same transaction as the change they announce.
outbox = outbox_table(metadata, "registry")

EVENT_TYPES = {
    ChangeKind.REGISTERED: "domain.registered",
    ChangeKind.UPDATED: "domain.updated",
    ChangeKind.STATUS_CHANGED: "domain.status_changed",
    ChangeKind.REMOVED: "domain.removed",
}


@dataclass(frozen=True)
class Loaded:
    """Everything the registry needs to resume after a restart."""

    records: list[DomainRecord]
    revision: int
    recent_changes: list[Change]


def _row(record: DomainRecord) -> dict[str, object]:
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
    )


class RegistryStore:
    """Reads and writes registry state; every write is one transaction.

    Args:
        db: The database to use.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.outbox = Outbox(db, outbox, "registry")

    async def open(self) -> None:
        """Creates the tables if they are missing."""
        await self.db.create_tables(metadata)

    async def close(self) -> None:
        """Closes the database."""
        await self.db.close()

    async def load(self, history: int) -> Loaded:
        """Every record, the revision, and up to `history` most recent changes."""
        async with self.db.read() as conn:
            records = [_record(r) for r in await conn.execute(select(domains))]
            revision = (
                await conn.execute(select(state.c.value).where(state.c.key == "revision"))
            ).scalar_one_or_none() or 0
            rows = await conn.execute(
                select(changes).order_by(changes.c.revision.desc()).limit(history)
            )
            recent = [
                Change(r.revision, ChangeKind(r.kind), DomainRecord.from_json(r.record))
                for r in rows
            ]
        recent.reverse()
        return Loaded(records, revision, recent)

    async def apply(self, change_list: Sequence[Change]) -> None:
        """Persists changes (each one registry revision) atomically, in order."""
        if not change_list:
            return
        async with self.db.transaction() as conn:
            for change in change_list:
                await self._apply_one(conn, change)
            await self._set_revision(conn, change_list[-1].revision)

    async def _apply_one(self, conn: AsyncConnection, change: Change) -> None:
        record = change.record
        if change.kind is ChangeKind.REMOVED:
            await conn.execute(delete(domains).where(domains.c.domain_id == record.domain_id))
        else:
            row = _row(record)
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
                },
                subject=record.domain_id,
            )

    async def _set_revision(self, conn: AsyncConnection, revision: int) -> None:
        stmt = self.db.insert(state).values(key="revision", value=revision)
        stmt = stmt.on_conflict_do_update(index_elements=[state.c.key], set_={"value": revision})
        await conn.execute(stmt)

    async def touch(self, records: Sequence[DomainRecord]) -> None:
        """Persists lease renewals and metrics that do not make a new revision."""
        if not records:
            return
        async with self.db.transaction() as conn:
            for record in records:
                await conn.execute(
                    update(domains)
                    .where(domains.c.domain_id == record.domain_id)
                    .values(
                        load=record.metrics.load,
                        latency_ms=record.metrics.latency_ms,
                        success_rate=record.metrics.success_rate,
                        last_heartbeat_at=record.last_heartbeat_at,
                        lease_expires_at=record.lease_expires_at,
                    )
                )

    async def trim_changes(self, keep_after_revision: int) -> int:
        """Deletes changes at or before a revision; returns how many went."""
        async with self.db.transaction() as conn:
            result = await conn.execute(
                delete(changes).where(changes.c.revision <= keep_after_revision)
            )
        return int(result.rowcount or 0)
