"""The full-text index of the shared memory, one implementation per database.

SQLite keeps a contentless FTS5 table (`memory_search`, rowid = contribution seq) ranked
with bm25; PostgreSQL keeps a `tsvector` per contribution with a GIN index, ranked with
`ts_rank`. Both index the words `text.document` produced, with no stemming or stop words
(FTS5 `unicode61`, PostgreSQL `simple`), so both backends match the same contributions.
A search requires every word, applies the filters in SQL, and orders by
`relevance * confidence` where relevance is the ranking function mapped into (0, 1) as
r / (1 + r); ties go to the newer contribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.storage import Database
from services.memory.model import SearchFilter
from services.memory.text import fts5_match, tsquery


@dataclass(frozen=True)
class Ranked:
    """One match before its row is fetched."""

    seq: int
    relevance: float
    score: float


class FullTextIndex(Protocol):
    """What the store needs from a backend's full-text index."""

    async def create(self, conn: AsyncConnection) -> None:
        """Creates the index if it is missing."""

    async def add(self, conn: AsyncConnection, rows: Sequence[tuple[int, str]]) -> None:
        """Indexes documents: (contribution seq, text of `text.document`)."""

    async def search(
        self, conn: AsyncConnection, query: SearchFilter, offset: int, limit: int
    ) -> list[Ranked]:
        """One page of matches, best first."""


def _filters(query: SearchFilter, params: dict[str, Any]) -> str:
    """SQL conditions on `c` (memory_contributions) for the search's filters."""
    clauses = ["c.confidence >= :min_confidence"]
    params["min_confidence"] = query.min_confidence
    if query.contribution_type:
        clauses.append("c.contribution_type = :contribution_type")
        params["contribution_type"] = query.contribution_type
    if query.domain_id:
        clauses.append("c.domain_id = :domain_id")
        params["domain_id"] = query.domain_id
    for i, tag in enumerate(query.tags):
        clauses.append(f"c.seq IN (SELECT seq FROM memory_tags WHERE tag = :tag{i})")
        params[f"tag{i}"] = tag
    return " AND ".join(clauses)


class Fts5Index:
    """SQLite FTS5: a contentless table whose rowid is the contribution's seq."""

    async def create(self, conn: AsyncConnection) -> None:
        await conn.execute(
            text(
                "CREATE VIRTUAL TABLE IF NOT EXISTS memory_search USING fts5("
                "body, content='', tokenize='unicode61 remove_diacritics 0')"
            )
        )

    async def add(self, conn: AsyncConnection, rows: Sequence[tuple[int, str]]) -> None:
        if rows:
            await conn.execute(
                text("INSERT INTO memory_search (rowid, body) VALUES (:seq, :body)"),
                [{"seq": seq, "body": body} for seq, body in rows],
            )

    async def search(
        self, conn: AsyncConnection, query: SearchFilter, offset: int, limit: int
    ) -> list[Ranked]:
        params: dict[str, Any] = {"match": fts5_match(query.terms), "lim": limit, "off": offset}
        where = _filters(query, params)
        # bm25() is negative, better matches more negative; -bm25 is the usual score r.
        sql = (
            "SELECT seq, rel, rel * conf AS score FROM ("
            " SELECT c.seq AS seq, c.confidence AS conf,"
            "  (-bm25(memory_search)) / (1.0 - bm25(memory_search)) AS rel"
            " FROM memory_search JOIN memory_contributions AS c ON c.seq = memory_search.rowid"
            f" WHERE memory_search MATCH :match AND {where}"
            ") ORDER BY score DESC, seq DESC LIMIT :lim OFFSET :off"
        )
        rows = await conn.execute(text(sql), params)
        return [Ranked(int(s), float(r), float(sc)) for s, r, sc in rows]


class TsvectorIndex:
    """PostgreSQL: a tsvector per contribution in `memory_search`, GIN-indexed."""

    async def create(self, conn: AsyncConnection) -> None:
        await conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS memory_search ("
                "seq BIGINT PRIMARY KEY, body TSVECTOR NOT NULL)"
            )
        )
        await conn.execute(
            text("CREATE INDEX IF NOT EXISTS memory_search_body ON memory_search USING GIN (body)")
        )

    async def add(self, conn: AsyncConnection, rows: Sequence[tuple[int, str]]) -> None:
        if rows:
            await conn.execute(
                text(
                    "INSERT INTO memory_search (seq, body) "
                    "VALUES (:seq, to_tsvector('simple', :body))"
                ),
                [{"seq": seq, "body": body} for seq, body in rows],
            )

    async def search(
        self, conn: AsyncConnection, query: SearchFilter, offset: int, limit: int
    ) -> list[Ranked]:
        params: dict[str, Any] = {"q": tsquery(query.terms), "lim": limit, "off": offset}
        where = _filters(query, params)
        # Normalization 32 makes ts_rank return r / (r + 1) already.
        sql = (
            "SELECT seq, rel, rel * conf AS score FROM ("
            " SELECT c.seq AS seq, c.confidence AS conf, ts_rank(s.body, q, 32) AS rel"
            " FROM memory_search AS s"
            " JOIN memory_contributions AS c ON c.seq = s.seq,"
            " to_tsquery('simple', :q) AS q"
            f" WHERE s.body @@ q AND {where}"
            ") AS m ORDER BY score DESC, seq DESC LIMIT :lim OFFSET :off"
        )
        rows = await conn.execute(text(sql), params)
        return [Ranked(int(s), float(r), float(sc)) for s, r, sc in rows]


def index_for(db: Database) -> FullTextIndex:
    """The full-text index of the database's backend."""
    return Fts5Index() if db.is_sqlite else TsvectorIndex()
