"""Guardian's own small store: the processes it spawned and the decisions it took.

Spawn records let `clear_port` prove that a process holding a port is one Guardian started
(pid and start time must both match), even one left over by an earlier Guardian run that
crashed. Every decision is written with its `healing.*` event in one transaction through the
transactional outbox, so the event reaches the bus once it is reachable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Float, Integer, MetaData, String, Table, select

from services.common.outbox import Outbox, outbox_table
from services.common.storage import Database

log = logging.getLogger(__name__)

SOURCE = "guardian"

metadata = MetaData()
processes_table = Table(
    "guardian_processes",
    metadata,
    Column("pid", Integer, primary_key=True, autoincrement=False),
    Column("start_ticks", BigInteger, nullable=False),
    Column("component", String(64), nullable=False),
    Column("port", Integer, nullable=False),
    Column("spawned_at", Float, nullable=False),
)
decisions_table = Table(
    "guardian_decisions",
    metadata,
    Column("decision_id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("component", String(64), nullable=False),
    Column("data", JSON, nullable=False),
    Column("event_id", String(128), nullable=False),
)
guardian_outbox_table = outbox_table(metadata, "guardian")


@dataclass(frozen=True)
class SpawnRecord:
    """A process Guardian started."""

    pid: int
    start_ticks: int
    component: str
    port: int
    spawned_at: float


@dataclass(frozen=True)
class Decision:
    """A decision Guardian took, as recorded."""

    at: float
    event_type: str
    component: str
    data: dict[str, Any]
    event_id: str


class GuardianStore:
    """Spawn records, decisions and the outbox, in one database.

    Args:
        db: The database (an SQLite file under the data dir by default).
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.outbox = Outbox(db, guardian_outbox_table, SOURCE)

    async def open(self) -> None:
        """Creates the tables if needed."""
        await self.db.create_tables(metadata)

    async def close(self) -> None:
        """Closes the database."""
        await self.db.close()

    async def record_spawn(self, pid: int, start_ticks: int, component: str, port: int) -> None:
        """Remembers a process Guardian started (a recycled pid replaces the old record)."""
        stmt = self.db.insert(processes_table).values(
            pid=pid, start_ticks=start_ticks, component=component, port=port, spawned_at=time.time()
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[processes_table.c.pid],
            set_={
                "start_ticks": stmt.excluded.start_ticks,
                "component": stmt.excluded.component,
                "port": stmt.excluded.port,
                "spawned_at": stmt.excluded.spawned_at,
            },
        )
        async with self.db.transaction() as conn:
            await conn.execute(stmt)

    async def spawned(self, pid: int) -> SpawnRecord | None:
        """The spawn record of a pid, if Guardian ever started a process with it."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(select(processes_table).where(processes_table.c.pid == pid))
            ).first()
        return None if row is None else SpawnRecord(**row._mapping)

    async def record_decision(
        self, event_type: str, component: str, data: Mapping[str, Any]
    ) -> str:
        """Stores a decision and its event (one transaction); returns the event id."""
        payload = {"component": component, **data}
        async with self.db.transaction() as conn:
            event_id = await self.outbox.enqueue(conn, event_type, payload, subject=component)
            await conn.execute(
                decisions_table.insert().values(
                    at=time.time(),
                    event_type=event_type,
                    component=component,
                    data=payload,
                    event_id=event_id,
                )
            )
        return event_id

    async def decisions(self, component: str | None = None, limit: int = 1000) -> list[Decision]:
        """Recorded decisions, oldest first, optionally for one component."""
        query = select(decisions_table).order_by(decisions_table.c.decision_id).limit(limit)
        if component is not None:
            query = query.where(decisions_table.c.component == component)
        async with self.db.read() as conn:
            rows = await conn.execute(query)
            return [
                Decision(
                    at=row.at,
                    event_type=row.event_type,
                    component=row.component,
                    data=dict(row.data),
                    event_id=row.event_id,
                )
                for row in rows
            ]
