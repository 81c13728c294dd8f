"""The full-text index of the shared memory, one implementation per database, and the
ranking both share.

SQLite keeps a contentless FTS5 table (`memory_search`, rowid = contribution seq);
PostgreSQL keeps a `tsvector` in each contribution row (`search`) with a GIN index. A
retracted contribution leaves the index (FTS5 'delete'; a NULL tsvector), so no search
matches or counts it. Both
index the words `text.document` produced, with no stemming or stop words (FTS5
`unicode61`, PostgreSQL `simple`), so both backends match the same contributions. The
index only decides which contributions match (every query word present); the ranking is
the same SQL arithmetic on both backends:

    idf(w)    = ln(1 + (N - n(w) + 0.5) / (n(w) + 0.5))           (BM25's idf)
    r         = sum of idf(w) over the query words
                * (k1 + 1) / (1 + k1 * (1 - b + b * words / avg_words))
    relevance = r / (1 + r)                                          (in (0, 1))
    score     = relevance * confidence

with k1 = 1.2 and b = 0.75: BM25 with every term counted once per document (knowledge
items are short; a word's repetition says little), N contributions, n(w) of them holding
word w, `words` the contribution's word count. Rare words make every match highly
relevant, so confidence decides; common words leave more room for shorter, more focused
contributions. Per-row auxiliary ranking functions (FTS5 bm25, ts_rank) are avoided on
purpose: on a common word they cost more than the whole rest of the query.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.storage import Database
from services.memory.model import SearchFilter

K1 = 1.2
B = 0.75


@dataclass(frozen=True)
class Ranked:
    """One match before its row is fetched."""

    seq: int
    relevance: float
    score: float


@dataclass(frozen=True)
class Corpus:
    """Size of the collection, for idf and length normalization."""

    documents: int
    words: int

    @property
    def average_words(self) -> float:
        """Mean words per contribution (at least 1)."""
        return max(1.0, self.words / self.documents) if self.documents else 1.0


def idf(documents: int, matching: int) -> float:
    """BM25's inverse document frequency, always positive."""
    return math.log(1 + (documents - matching + 0.5) / (matching + 0.5))


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
    params.update(
        min_confidence=query.min_confidence,
        weight=weight * (K1 + 1),
        k1=K1,
        b=B,
        avg_words=corpus.average_words,
    )
    if query.contribution_type:
        clauses.append("c.contribution_type = :contribution_type")
        params["contribution_type"] = query.contribution_type
    if query.domain_id:
        clauses.append("c.domain_id = :domain_id")
        params["domain_id"] = query.domain_id
    for i, tag in enumerate(query.tags):
        clauses.append(f"c.seq IN (SELECT seq FROM memory_tags WHERE tag = :tag{i})")
        params[f"tag{i}"] = tag
    # Explicit casts: PostgreSQL would otherwise type the parameters after `c.words`
    # (an integer) and truncate them.
    weight_p, k1_p, b_p, avg_p = (
        f"CAST(:{name} AS DOUBLE PRECISION)" for name in ("weight", "k1", "b", "avg_words")
    )
    raw = f"({weight_p} / (1 + {k1_p} * (1 - {b_p} + {b_p} * c.words / {avg_p})))"
    sql = (
        "SELECT seq, rel, rel * conf AS score FROM ("
        f" SELECT c.seq AS seq, c.confidence AS conf, {raw} / (1 + {raw}) AS rel"
        f" {matches_sql} AND {' AND '.join(clauses)}"
        ") AS m ORDER BY score DESC, seq DESC LIMIT :lim OFFSET :off"
    )
    return sql, params


class Fts5Index:
    """SQLite FTS5: a contentless table whose rowid is the contribution's seq."""

    async def create(self, conn: AsyncConnection) -> None:
        await conn.execute(
            text(
                "CREATE VIRTUAL TABLE IF NOT EXISTS memory_search USING fts5("
                "body, content='', detail=none, tokenize='unicode61 remove_diacritics 0')"
            )
        )

    async def add(self, conn: AsyncConnection, rows: Sequence[tuple[int, str]]) -> None:
        if rows:
            await conn.execute(
                text("INSERT INTO memory_search (rowid, body) VALUES (:seq, :body)"),
                [{"seq": seq, "body": body} for seq, body in rows],
            )

    async def remove(self, conn: AsyncConnection, seq: int, document: str) -> None:
        # A contentless table forgets a row through the 'delete' command, given the very
        # text it indexed: `text.document` of the stored type, tags and content rebuilds it.
        await conn.execute(
            text(
                "INSERT INTO memory_search (memory_search, rowid, body)"
                " VALUES ('delete', :seq, :body)"
            ),
            {"seq": seq, "body": document},
        )

    async def search(
        self, conn: AsyncConnection, query: SearchFilter, corpus: Corpus, offset: int, limit: int
    ) -> list[Ranked]:
        weight = 0.0
        for term in query.terms:
            matching = await conn.execute(
                text("SELECT count(*) FROM memory_search WHERE memory_search MATCH :m"),
                {"m": f'"{term}"'},
            )
            weight += idf(corpus.documents, int(matching.scalar_one()))
        match = " AND ".join(f'"{t}"' for t in query.terms)
        # The covering index (seq, confidence, words) answers the join without reading
        # the wide contribution rows; SQLite would otherwise pick the rowid.
        sql, params = _ranked_page(
            "FROM memory_search JOIN memory_contributions AS c"
            " INDEXED BY memory_contributions_rank ON c.seq = memory_search.rowid"
            " WHERE memory_search MATCH :match",
            query,
            corpus,
            weight,
            {"match": match, "lim": limit, "off": offset},
        )
        rows = await conn.execute(text(sql), params)
        return [Ranked(int(s), float(r), float(sc)) for s, r, sc in rows]


class TsvectorIndex:
    """PostgreSQL: the `search` tsvector column of memory_contributions, GIN-indexed.

    The column and its index are part of the table (see `store.py`) and the store writes
    the tsvector with the row, so `create` and `add` have nothing to do.
    """

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
        weight = 0.0
        for term in query.terms:
            matching = await conn.execute(
                text(
                    "SELECT count(*) FROM memory_contributions "
                    "WHERE search @@ to_tsquery('simple', :t)"
                ),
                {"t": term},
            )
            weight += idf(corpus.documents, int(matching.scalar_one()))
        sql, params = _ranked_page(
            "FROM memory_contributions AS c WHERE c.search @@ to_tsquery('simple', :q)",
            query,
            corpus,
            weight,
            {"q": " & ".join(query.terms), "lim": limit, "off": offset},
        )
        rows = await conn.execute(text(sql), params)
        return [Ranked(int(s), float(r), float(sc)) for s, r, sc in rows]


def index_for(db: Database) -> FullTextIndex:
    """The full-text index of the database's backend."""
    return Fts5Index() if db.is_sqlite else TsvectorIndex()
