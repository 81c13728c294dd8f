"""The full-text index of the shared memory on each backend, built on the shared
`services.common.fulltext` (tokenizer, BM25 ranking, FTS5 and tsvector indexes).

SQLite keeps a contentless FTS5 table (`memory_search`, rowid = contribution seq);
PostgreSQL keeps a `tsvector` in each contribution row (`search`) with a GIN index. A
retracted contribution leaves the index (FTS5 'delete'; a NULL tsvector), so no search
matches or counts it. Both index the words `text.document` produced. The ranking is
`fulltext`'s BM25 relevance times the contribution's confidence:

    score = relevance * confidence

Rare words make every match highly relevant, so confidence decides; common words leave
more room for shorter, more focused contributions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.fulltext import (
    Corpus,
    Fts5Table,
    TsvectorColumn,
    ranking_params,
    relevance_sql,
)
from services.common.storage import Database
from services.memory.model import SearchFilter

__all__ = ["Corpus", "Fts5Index", "FullTextIndex", "Ranked", "TsvectorIndex", "index_for"]


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

    async def remove(self, conn: AsyncConnection, seq: int, document: str) -> None:
        """Takes a contribution out of the index (`document` is the text it was indexed
        with)."""

    async def search(
        self, conn: AsyncConnection, query: SearchFilter, corpus: Corpus, offset: int, limit: int
    ) -> list[Ranked]:
        """One page of matches, best first."""


def _ranked_page(
    matches_sql: str, query: SearchFilter, corpus: Corpus, weight: float, params: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The ranking query around a backend's `FROM ... WHERE <match>` clause on `c`."""
    clauses = ["c.confidence >= CAST(:min_confidence AS DOUBLE PRECISION)"]
    params.update(min_confidence=query.min_confidence, **ranking_params(weight, corpus))
    if query.contribution_type:
        clauses.append("c.contribution_type = :contribution_type")
        params["contribution_type"] = query.contribution_type
    if query.domain_id:
        clauses.append("c.domain_id = :domain_id")
        params["domain_id"] = query.domain_id
    for i, tag in enumerate(query.tags):
        clauses.append(f"c.seq IN (SELECT seq FROM memory_tags WHERE tag = :tag{i})")
        params[f"tag{i}"] = tag
    sql = (
        "SELECT seq, rel, rel * conf AS score FROM ("
        f" SELECT c.seq AS seq, c.confidence AS conf, {relevance_sql('c.words')} AS rel"
        f" {matches_sql} AND {' AND '.join(clauses)}"
        ") AS m ORDER BY score DESC, seq DESC LIMIT :lim OFFSET :off"
    )
    return sql, params


class Fts5Index:
    """SQLite FTS5: a contentless table whose rowid is the contribution's seq."""

    def __init__(self) -> None:
        self.table = Fts5Table("memory_search")

    async def create(self, conn: AsyncConnection) -> None:
        await self.table.create(conn)

    async def add(self, conn: AsyncConnection, rows: Sequence[tuple[int, str]]) -> None:
        await self.table.add(conn, [(seq, (body,)) for seq, body in rows])

    async def remove(self, conn: AsyncConnection, seq: int, document: str) -> None:
        # `text.document` of the stored type, tags and content rebuilds the indexed text.
        await self.table.remove(conn, seq, (document,))

    async def search(
        self, conn: AsyncConnection, query: SearchFilter, corpus: Corpus, offset: int, limit: int
    ) -> list[Ranked]:
        weight = await self.table.weight(conn, query.terms, corpus)
        # The covering index (seq, confidence, words) answers the join without reading
        # the wide contribution rows; SQLite would otherwise pick the rowid.
        sql, params = _ranked_page(
            "FROM memory_search JOIN memory_contributions AS c"
            " INDEXED BY memory_contributions_rank ON c.seq = memory_search.rowid"
            " WHERE memory_search MATCH :match",
            query,
            corpus,
            weight,
            {"match": self.table.match(query.terms), "lim": limit, "off": offset},
        )
        rows = await conn.execute(text(sql), params)
        return [Ranked(int(s), float(r), float(sc)) for s, r, sc in rows]


class TsvectorIndex:
    """PostgreSQL: the `search` tsvector column of memory_contributions, GIN-indexed.

    The column and its index are part of the table (see `store.py`) and the store writes
    the tsvector with the row, so `create` and `add` have nothing to do.
    """

    def __init__(self) -> None:
        self.column = TsvectorColumn("memory_contributions", "search")

    async def create(self, conn: AsyncConnection) -> None:
        return None

    async def add(self, conn: AsyncConnection, rows: Sequence[tuple[int, str]]) -> None:
        return None

    async def remove(self, conn: AsyncConnection, seq: int, document: str) -> None:
        # A NULL tsvector matches nothing and leaves the GIN index.
        await conn.execute(
            text("UPDATE memory_contributions SET search = NULL WHERE seq = :seq"), {"seq": seq}
        )

    async def search(
        self, conn: AsyncConnection, query: SearchFilter, corpus: Corpus, offset: int, limit: int
    ) -> list[Ranked]:
        weight = await self.column.weight(conn, query.terms, corpus)
        sql, params = _ranked_page(
            "FROM memory_contributions AS c WHERE c.search @@ to_tsquery('simple', :q)",
            query,
            corpus,
            weight,
            {"q": self.column.tsquery(query.terms), "lim": limit, "off": offset},
        )
        rows = await conn.execute(text(sql), params)
        return [Ranked(int(s), float(r), float(sc)) for s, r, sc in rows]


def index_for(db: Database) -> FullTextIndex:
    """The full-text index of the database's backend."""
    return Fts5Index() if db.is_sqlite else TsvectorIndex()
