"""Ownership of executions across orchestrator instances sharing one PostgreSQL database.

Each execution has one lease row: the instance that owns it, a fencing token and when the
lease expires (PostgreSQL's clock, so instances on hosts whose clocks differ agree). An
instance takes a lease when it starts an execution (token 1) or takes over one whose lease
has expired (token + 1); it renews all of its leases in one statement every third of the
lease time. Every write of a transition checks, in its own transaction, that the row still
carries the writer's token (`fence`), with the lease row locked: a takeover waits for a
transition being written, and once it has happened the old owner's writes are refused with
`LeaseLost`. So an instance that stalls, or is cut off from the database, past its lease
can never overwrite the new owner's progress, and an instance that dies has its executions
resumed by another within the lease time.

Lease rows of ended executions stay (their token is the floor of the next one: a
compensation round takes the lease again with a higher token).
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Collection, Iterable

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    Index,
    MetaData,
    String,
    Table,
    and_,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.sql.expression import ColumnClause

from services.common.errors import Aborted
from services.common.storage import Database

log = logging.getLogger(__name__)

_NOW: ColumnClause[float] = literal_column("extract(epoch from clock_timestamp())", Float())


def lease_table(metadata: MetaData) -> Table:
    """The orchestrator's lease table."""
    return Table(
        "orchestrator_leases",
        metadata,
        Column("execution_id", String(128), primary_key=True),
        Column("owner", String(128), nullable=False),
        Column("token", BigInteger, nullable=False),
        Column("expires_at", Float, nullable=False),
        Index("orchestrator_leases_owner", "owner"),
        Index("orchestrator_leases_expires", "expires_at"),
    )


def instance_name() -> str:
    """A name for this orchestrator instance, unique across restarts."""
    return f"{socket.gethostname()[:64]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class LeaseLost(Aborted):
    """Another instance owns the execution now; this instance must stop driving it."""

    def __init__(self, execution_id: str) -> None:
        super().__init__(
            f"execution {execution_id!r} is owned by another orchestrator instance now",
            reason="EXECUTION_LEASE_LOST",
        )
        self.execution_id = execution_id


class ExecutionLeases:
    """The leases this instance holds, and the statements that take, renew and check them.

    Args:
        db: The orchestrator's PostgreSQL database.
        table: The lease table.
        executions: The executions table (to find executions nobody owns).
        terminal: Names of the states in which an execution needs no owner.
        owner: This instance's name.
        lease_s: How long a lease lasts without renewal.
    """

    def __init__(
        self,
        db: Database,
        table: Table,
        executions: Table,
        terminal: Collection[str],
        owner: str,
        lease_s: float,
    ) -> None:
        self.db = db
        self.table = table
        self.executions = executions
        self.terminal = list(terminal)
        self.owner = owner
        self.lease_s = lease_s
        self.held: dict[str, int] = {}

    async def acquire(self, execution_id: str) -> int | None:
        """Takes the execution's lease when it is free, expired or already ours.

        Returns:
            The new fencing token, or None when another instance holds a live lease.
        """
        table = self.table
        stmt = self.db.insert(table).values(
            execution_id=execution_id,
            owner=self.owner,
            token=1,
            expires_at=_NOW + self.lease_s,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[table.c.execution_id],
            set_={
                "owner": stmt.excluded.owner,
                "token": table.c.token + 1,
                "expires_at": stmt.excluded.expires_at,
            },
            where=or_(table.c.expires_at < _NOW, table.c.owner == self.owner),
        ).returning(table.c.token)
        async with self.db.transaction() as conn:
            token = (await conn.execute(stmt)).scalar_one_or_none()
        if token is None:
            return None
        self.held[execution_id] = int(token)
        return int(token)

    def drop(self, execution_id: str) -> None:
        """Stops renewing a lease (the execution ended or was lost); it lapses by itself."""
        self.held.pop(execution_id, None)

    async def renew(self) -> set[str]:
        """Extends every lease this instance holds; returns the ones it no longer holds."""
        if not self.held:
            return set()
        # Executions start while the statement runs: only the leases it renewed can be
        # judged by its answer (one acquired meanwhile is not in it, and is not lost).
        asked = dict(self.held)
        table = self.table
        stmt = (
            update(table)
            .where(and_(table.c.owner == self.owner, table.c.execution_id.in_(list(asked))))
            .values(expires_at=_NOW + self.lease_s)
            .returning(table.c.execution_id, table.c.token)
        )
        async with self.db.transaction() as conn:
            kept = {row[0]: int(row[1]) for row in await conn.execute(stmt)}
        lost = {
            e for e, token in asked.items() if kept.get(e) != token and self.held.get(e) == token
        }
        for execution_id in lost:
            self.held.pop(execution_id, None)
        return lost

    async def orphans(self, limit: int) -> list[str]:
        """Executions that have not ended and that nobody holds a live lease on."""
        e, lease = self.executions, self.table
        query = (
            select(e.c.execution_id)
            .select_from(e.outerjoin(lease, lease.c.execution_id == e.c.execution_id))
            .where(
                e.c.state.not_in(self.terminal),
                or_(lease.c.execution_id.is_(None), lease.c.expires_at < _NOW),
            )
            .order_by(e.c.created_at)
            .limit(limit)
        )
        async with self.db.read() as conn:
            return [row[0] for row in await conn.execute(query)]

    def fence(self, conn: Connection, execution_ids: Iterable[str]) -> set[str]:
        """Of `execution_ids`, those whose lease row still carries this instance's token.

        Runs inside the transaction that writes their transitions and locks their lease
        rows until it commits, so a takeover cannot slip between the check and the write.
        """
        wanted = {e: self.held.get(e) for e in execution_ids}
        query = (
            select(self.table.c.execution_id, self.table.c.token)
            .where(
                self.table.c.execution_id.in_(list(wanted)),
                self.table.c.owner == self.owner,
            )
            .with_for_update(read=True)
        )
        current = {row[0]: int(row[1]) for row in conn.execute(query)}
        return {e for e, token in wanted.items() if token is not None and current.get(e) == token}
