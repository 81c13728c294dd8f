"""Durable state of the trigger mesh: versioned rules, firings and two outboxes (bus events
and immutable-log entries).

Exactly once per (event, rule): a firing's primary key is `firing_id(event_id, rule_id)`
and `claim` inserts it with ON CONFLICT DO NOTHING, so of any number of deliveries of the
same event (the bus redelivers until the mesh acknowledges, after the claim commits) one
creates the firing and the others find it. Claims and outcomes are
written by the store's group-committed `FiringWriter` (see `services.kernels.triggers.writer`).
An attempt takes a firing with a compare-and-set on its state and lease (`take_due`), so two
instances never run the same attempt at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.outbox import outbox_table
from services.common.storage import Database
from services.kernels.triggers.model import Firing, FiringState, Rule, parse_rule
from services.kernels.triggers.writer import FiringWriter

metadata = MetaData()

rules = Table(
    "triggers_rules",
    metadata,
    Column("rule_id", String(128), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("record", JSON, nullable=False),
)

firings = Table(
    "triggers_firings",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("firing_id", String(64), nullable=False, unique=True),
    Column("rule_id", String(128), nullable=False),
    Column("state", String(32), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_at", Float, nullable=False),
    Column("lease_until", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("record", JSON, nullable=False),
    Index("triggers_firings_due", "state", "next_at"),
    Index("triggers_firings_rule", "rule_id", "seq"),
)

events_outbox = outbox_table(metadata, "triggers")
log_outbox = outbox_table(metadata, "triggers_log")


def _firing(row: Any) -> Firing:
    record = row.record
    return Firing(
        firing_id=row.firing_id,
        rule_id=row.rule_id,
        rule_version=int(record["rule_version"]),
        event=record["event"],
        state=FiringState(row.state),
        attempts=row.attempts,
        next_at=row.next_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        result=record.get("result", {}),
    )


class TriggersStore:
    """Reads and writes the mesh's state.

    Args:
        db: The database.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.writer = FiringWriter(db, firings, events_outbox, log_outbox)

    async def open(self) -> None:
        """Creates the tables if missing and starts the writer."""
        await self.db.create_tables(metadata)
        await self.writer.open()

    async def close(self) -> None:
        """Commits the writer's queue, then closes the database."""
        await self.writer.close()
        await self.db.close()

    # Rules

    async def rules(self) -> list[Rule]:
        """Every live rule."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(rules.c.record, rules.c.version, rules.c.record)
                .where(rules.c.deleted.is_(False))
                .order_by(rules.c.rule_id)
            )
            return [
                parse_rule(r.record, origin=r.record.get("origin", "api"), version=r.version)
                for r in rows
            ]

    async def get_rule(self, rule_id: str) -> Rule | None:
        """One live rule."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(rules.c.record, rules.c.version).where(
                        rules.c.rule_id == rule_id, rules.c.deleted.is_(False)
                    )
                )
            ).first()
        if row is None:
            return None
        return parse_rule(row.record, origin=row.record.get("origin", "api"), version=row.version)

    async def current_version(self, conn: AsyncConnection, rule_id: str) -> tuple[int, bool]:
        """(version, deleted) of a rule; (0, True) for one never stored."""
        row = (
            await conn.execute(
                select(rules.c.version, rules.c.deleted).where(rules.c.rule_id == rule_id)
            )
        ).first()
        return (0, True) if row is None else (int(row.version), bool(row.deleted))

    async def write_rule(
        self, conn: AsyncConnection, rule: Rule, *, deleted: bool, now: float
    ) -> None:
        """Stores `rule` at its version (the caller computed it)."""
        values = {
            "version": rule.version,
            "deleted": deleted,
            "updated_at": now,
            "record": rule.to_json(),
        }
        stmt = self.db.insert(rules).values(rule_id=rule.rule_id, **values)
        await conn.execute(stmt.on_conflict_do_update(index_elements=["rule_id"], set_=values))

    # Firings

    async def take_due(self, now: float, lease_s: float, limit: int) -> list[Firing]:
        """Pending firings due by `now` whose lease lapsed, leased to the caller."""
        async with self.db.transaction() as conn:
            rows = (
                await conn.execute(
                    select(firings)
                    .where(
                        firings.c.state == FiringState.PENDING.value,
                        firings.c.next_at <= now,
                        firings.c.lease_until <= now,
                    )
                    .order_by(firings.c.next_at)
                    .limit(limit)
                )
            ).all()
            taken: list[Firing] = []
            for row in rows:
                result = await conn.execute(
                    update(firings)
                    .where(
                        and_(
                            firings.c.firing_id == row.firing_id,
                            firings.c.state == FiringState.PENDING.value,
                            firings.c.lease_until == row.lease_until,
                        )
                    )
                    .values(lease_until=now + lease_s)
                )
                if result.rowcount:
                    taken.append(_firing(row))
            return taken

    async def get_firing(self, firing_id: str) -> Firing | None:
        """One firing."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(select(firings).where(firings.c.firing_id == firing_id))
            ).first()
        return None if row is None else _firing(row)

    async def list_firings(
        self,
        *,
        rule_id: str = "",
        states: Sequence[FiringState] = (),
        before: int | None = None,
        limit: int = 100,
    ) -> list[tuple[int, Firing]]:
        """Firings newest first, with their sequence numbers."""
        query = select(firings).order_by(firings.c.seq.desc()).limit(limit)
        if rule_id:
            query = query.where(firings.c.rule_id == rule_id)
        if states:
            query = query.where(firings.c.state.in_([s.value for s in states]))
        if before is not None:
            query = query.where(firings.c.seq < before)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [(int(row.seq), _firing(row)) for row in rows]
