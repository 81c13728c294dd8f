"""Where the health federation's suspicions are kept: the registry's database.

Observers report to whichever registry instance they reach, so the book must be one for
all instances: each report or refutation is a transaction that locks its suspect (an
advisory lock on PostgreSQL, keyed by the suspect's id, taken before the row may exist),
reads that suspect's part of the book, and writes it back with the events it caused.
Reports about one suspect are thus counted one after the other toward one quorum, whatever
instance they reach; reports about different suspects do not wait for each other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.storage import Database
from services.registry.suspicions import Suspicion, SuspicionBook, SuspicionState
from services.registry.tables import incarnations, suspicions


@dataclass(frozen=True)
class SuspectEdit:
    """One suspect's part of the book, open in a transaction.

    Attributes:
        conn: The transaction (write the events of the transitions here).
        book: A book holding only this suspect; change it, it is written back at the end.
    """

    conn: AsyncConnection
    book: SuspicionBook


def _suspicion(row: object) -> Suspicion:
    m = row._mapping  # type: ignore[attr-defined]  # SQLAlchemy Row
    return Suspicion(
        suspect_id=m["suspect_id"],
        incarnation=m["incarnation"],
        state=SuspicionState(m["state"]),
        suspecting=frozenset(m["suspecting"]),
        confirming=frozenset(m["confirming"]),
        observers=tuple(m["observers"]),
        quorum=m["quorum"],
        suspected_at=m["suspected_at"],
        confirmed_at=m["confirmed_at"],
    )


class SuspicionStore:
    """Reads and writes the suspicion book.

    Args:
        db: The registry's database (its tables are created with the registry's).
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    @asynccontextmanager
    async def editing(self, suspect_id: str) -> AsyncIterator[SuspectEdit]:
        """The suspect's part of the book, locked; written back when the block ends."""
        async with self.db.transaction() as conn:
            if not self.db.is_sqlite:
                await conn.execute(
                    text(
                        "SELECT pg_advisory_xact_lock("
                        "hashtext(current_schema() || '/registry-suspect/' || :suspect))"
                    ),
                    {"suspect": suspect_id},
                )
            row = (
                await conn.execute(select(suspicions).where(suspicions.c.suspect_id == suspect_id))
            ).first()
            known = (
                await conn.execute(
                    select(incarnations.c.incarnation).where(incarnations.c.domain_id == suspect_id)
                )
            ).scalar_one_or_none()
            book = SuspicionBook(
                [_suspicion(row)] if row is not None else [],
                {suspect_id: int(known)} if known is not None else {},
            )
            edit = SuspectEdit(conn, book)
            yield edit
            await self._write_back(conn, suspect_id, book)

    async def _write_back(
        self, conn: AsyncConnection, suspect_id: str, book: SuspicionBook
    ) -> None:
        await conn.execute(delete(suspicions).where(suspicions.c.suspect_id == suspect_id))
        suspicion = book.get(suspect_id)
        if suspicion is not None:
            await conn.execute(
                suspicions.insert().values(
                    suspect_id=suspect_id,
                    incarnation=suspicion.incarnation,
                    state=suspicion.state.value,
                    suspecting=sorted(suspicion.suspecting),
                    confirming=sorted(suspicion.confirming),
                    observers=list(suspicion.observers),
                    quorum=suspicion.quorum,
                    suspected_at=suspicion.suspected_at,
                    confirmed_at=suspicion.confirmed_at,
                )
            )
        known = book.incarnation(suspect_id)
        if known:
            stmt = self.db.insert(incarnations).values(domain_id=suspect_id, incarnation=known)
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[incarnations.c.domain_id], set_={"incarnation": known}
                )
            )

    async def get(self, suspect_id: str) -> Suspicion | None:
        """The open suspicion of `suspect_id`, or None."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(select(suspicions).where(suspicions.c.suspect_id == suspect_id))
            ).first()
            return _suspicion(row) if row is not None else None

    async def page(self, after: str, limit: int) -> list[Suspicion]:
        """Up to `limit` open suspicions with suspect ids after `after`, by suspect id."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(suspicions)
                .where(suspicions.c.suspect_id > after)
                .order_by(suspicions.c.suspect_id)
                .limit(limit)
            )
            return [_suspicion(r) for r in rows]
