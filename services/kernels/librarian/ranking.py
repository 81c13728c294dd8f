"""Reading the librarian's index in ranking order: search and the lookups of similar.

On SQLite the FTS5 rowid of a document is `key(seq, words)`, so the index is stored in
ranking order (fewest words first, then newest) and a query stops after the first page of
matches; PostgreSQL orders by `(words, seq DESC)`. Candidates are scored with
`services.common.fulltext.relevance` on both backends, so both return the same documents in
the same order with the same scores.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.fulltext import idf, relevance
from services.kernels.librarian.model import FIELDS, Document, SearchQuery

if TYPE_CHECKING:
    from services.kernels.librarian.store import LibrarianStore

COLUMNS = ("title", "body", "meta")
"""Index columns, one per field of FIELDS."""

TITLE_BOOST = 2.0
"""A document whose title holds every query word weighs this much more (BM25F's field
weight with each term counted once)."""

SEQ_MASK = (1 << 32) - 1
MAX_KEY_WORDS = (1 << 30) - 1
FREQUENCY_TTL_S = 10.0
"""How long a term's document frequency is reused: idf weights may lag writes by this
much; which documents match never does."""
MAX_CACHED_FREQUENCIES = 50_000


def key(seq: int, words: int) -> int:
    """The FTS5 rowid of a document: its word count, then its seq reversed, so that the
    index's own order is the ranking order (fewest words first, then newest)."""
    return (min(words, MAX_KEY_WORDS) << 32) | (SEQ_MASK - seq)


def unkey(value: int) -> tuple[int, int]:
    """(seq, words) of an FTS5 rowid."""
    return SEQ_MASK - (value & SEQ_MASK), value >> 32


def columns_of(fields: Sequence[str]) -> list[str]:
    """The index columns of API fields."""
    return [COLUMNS[FIELDS.index(f)] for f in fields]


class Ranking:
    """Search and similar-document lookups over a store's index.

    Args:
        store: The store whose index and documents are read.
    """

    def __init__(self, store: LibrarianStore) -> None:
        self.store = store
        self._frequencies: dict[tuple[str, tuple[str, ...]], tuple[int, float]] = {}
        self._monotonic = time.monotonic

    async def _frequency(self, conn: AsyncConnection, term: str, columns: Sequence[str]) -> int:
        cache_key = (term, tuple(columns))
        now = self._monotonic()
        cached = self._frequencies.get(cache_key)
        if cached is not None and now - cached[1] < FREQUENCY_TTL_S:
            return cached[0]
        index = self.store.fts if self.store.db.is_sqlite else self.store.tsvector
        found = await index.frequency(conn, term, columns)
        if len(self._frequencies) >= MAX_CACHED_FREQUENCIES:
            self._frequencies.clear()
        self._frequencies[cache_key] = (found, now)
        return found

    async def _weight(
        self, conn: AsyncConnection, terms: Sequence[str], columns: Sequence[str]
    ) -> float:
        total = 0.0
        for term in terms:
            total += idf(self.store.corpus.documents, await self._frequency(conn, term, columns))
        return total

    async def _shortest(
        self,
        conn: AsyncConnection,
        terms: Sequence[str],
        columns: Sequence[str],
        query: SearchQuery,
        n: int,
    ) -> list[tuple[int, int]]:
        """The first `n` matches in ranking order (fewest words, then newest): (seq, words).

        On SQLite the index key orders the index itself that way, so FTS5 stops after `n`
        matches instead of ranking every one; PostgreSQL walks `librarian_documents_length`
        or sorts the matches, as its planner judges cheaper.
        """
        params: dict[str, Any] = {"n": n}
        clauses: list[str] = []
        if query.source:
            clauses.append("c.source = :source")
            params["source"] = query.source
        for i, (name, value) in enumerate(query.metadata):
            clauses.append(
                f"c.seq IN (SELECT seq FROM librarian_metadata WHERE key = :mk{i}"
                f" AND value = :mv{i})"
            )
            params[f"mk{i}"], params[f"mv{i}"] = name, value
        where = "".join(f" AND {c}" for c in clauses)
        if self.store.db.is_sqlite:
            params["match"] = self.store.fts.match(terms, columns)
            if not clauses:
                sql = (
                    "SELECT rowid FROM librarian_search WHERE librarian_search MATCH :match"
                    " ORDER BY rowid LIMIT :n"
                )
            else:
                params["mask"] = SEQ_MASK
                sql = (
                    "SELECT s.rowid FROM librarian_search AS s JOIN librarian_documents AS c"
                    " ON c.seq = :mask - (s.rowid & :mask)"
                    f" WHERE s.librarian_search MATCH :match{where} ORDER BY s.rowid LIMIT :n"
                )
            rows = await conn.execute(text(sql), params)
            return [unkey(int(k)) for (k,) in rows]
        params["q"] = self.store.tsvector.tsquery(terms, columns)
        sql = (
            "SELECT c.seq, c.words FROM librarian_documents AS c"
            f" WHERE c.search @@ to_tsquery('simple', :q){where}"
            " ORDER BY c.words, c.seq DESC LIMIT :n"
        )
        rows = await conn.execute(text(sql), params)
        return [(int(seq), int(words)) for seq, words in rows]

    async def search(
        self, query: SearchQuery, offset: int, limit: int
    ) -> list[tuple[Document, float]]:
        """One page of matches, best first (ties: newest first).

        Every match holds every query word, each counted once, so a match's BM25 relevance
        depends only on its length and on whether its title holds the words too: the best
        `n` are among the `n` shortest matches and the `n` shortest title matches. Those
        two short lists are read in order (no match outside them is ranked) and scored
        with `fulltext.relevance`, the same arithmetic on both backends.
        """
        fields = list(query.fields) if query.fields else list(FIELDS)
        columns = columns_of(fields)
        boosted = "title" in fields and len(fields) > 1
        n = offset + limit
        async with self.store.db.read() as conn:
            weight = await self._weight(conn, query.terms, columns)
            general = await self._shortest(conn, query.terms, columns, query, n)
            in_title = (
                await self._shortest(conn, query.terms, ["title"], query, n) if boosted else []
            )
            title_seqs = {seq for seq, _ in in_title}
            corpus = self.store.corpus
            candidates = dict(general) | dict(in_title)
            scored = [
                (relevance(weight, words, corpus, TITLE_BOOST if seq in title_seqs else 1.0), seq)
                for seq, words in candidates.items()
            ]
            ranked = sorted(scored, key=lambda pair: (-pair[0], -pair[1]))[offset:n]
            found = await self.store.fetch(conn, [seq for _, seq in ranked]) if ranked else {}
        return [(found[seq], score) for score, seq in ranked if seq in found]

    async def frequencies(self, terms: Sequence[str]) -> dict[str, int]:
        """How many documents hold each term (in any field)."""
        async with self.store.db.read() as conn:
            return {t: await self._frequency(conn, t, COLUMNS) for t in terms}

    async def holding(self, term: str, limit: int, source: str = "") -> list[tuple[int, int]]:
        """Up to `limit` documents holding `term` (from `source`, if given), fewest words
        first: (seq, words)."""
        query = SearchQuery(terms=(term,), source=source)
        async with self.store.db.read() as conn:
            return await self._shortest(conn, [term], COLUMNS, query, limit)
