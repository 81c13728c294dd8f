"""Durable state of the librarian on SQLite or PostgreSQL, with its full-text index.

SQLite keeps a contentless FTS5 table `librarian_search` (columns title, body, meta; rowid
= `key(seq, words)`, so the index is stored in ranking order); PostgreSQL keeps a weighted
tsvector in each document row. Both are fed the words `services.common.fulltext` produced
and scored by its BM25 arithmetic in Python, so the two backends return the same documents
in the same order with the same scores. Writes take the caller's
connection, so a change and its announcing event commit in one transaction.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.fulltext import (
    Corpus,
    Fts5Table,
    TsvectorColumn,
    idf,
    indexed_text,
    relevance,
)
from services.common.storage import Database
from services.kernels.librarian.model import (
    FIELDS,
    Document,
    IndexResult,
    NewDocument,
    SearchQuery,
    SourceCount,
)
from services.kernels.librarian.schema import (
    document_from_row,
    documents,
    metadata,
    metadata_entries,
)

TITLE_BOOST = 2.0
"""A document whose title holds every query word weighs this much more (BM25F's field
weight with each term counted once)."""

# Index columns per field (FIELDS order) and PostgreSQL weights.
_COLUMNS = ("title", "body", "meta")
_WEIGHTS = {"title": "A", "body": "B", "meta": "C"}
_PARAMS = {"title": "t_title", "body": "t_body", "meta": "t_meta"}


@dataclass(frozen=True)
class Entry:
    """A validated document with what the index stores for it.

    Attributes:
        document: The document.
        texts: Indexed words per index column (title, body, meta).
        words: Word count over every field (the ranking's document length).
        digest: Content digest; an unchanged resubmission writes nothing.
        filters: Filterable metadata entries (key, value).
    """

    document: NewDocument
    texts: tuple[str, str, str]
    words: int
    digest: str
    filters: tuple[tuple[str, str], ...]


DOCUMENT_COLUMNS = (
    "seq",
    "document_id",
    "source",
    "title",
    "text",
    "metadata",
    "words",
    "created_at",
    "updated_at",
)
"""What reading a document needs (not its digest or tsvector)."""

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


def indexed_texts(title: str, body: str, meta_strings: Sequence[str]) -> tuple[str, str, str]:
    """The indexed words of each field."""
    return indexed_text(title), indexed_text(body), indexed_text(*meta_strings)


def _columns(fields: Sequence[str]) -> list[str]:
    return [_COLUMNS[FIELDS.index(f)] for f in fields]


class LibrarianStore:
    """Reads and writes the librarian's tables and index.

    Args:
        db: The database to use.
        meta_strings: Turns a document's metadata into the strings its `metadata` field
            indexes (the core's rule, needed again to forget a replaced row).
    """

    def __init__(self, db: Database, meta_strings: Callable[[Any], Sequence[str]]) -> None:
        self.db = db
        self._meta_strings = meta_strings
        self.fts = Fts5Table("librarian_search", _COLUMNS)
        self.tsvector = TsvectorColumn("librarian_documents", "search", _WEIGHTS)
        # Collection size for the ranking, kept in memory: counted at open, then moved by
        # this process's writes (another instance's writes only shift weights slightly).
        self.corpus = Corpus(0, 0)
        self._frequencies: dict[tuple[str, tuple[str, ...]], tuple[int, float]] = {}
        self.uncompacted = 0
        """Documents written since the index was last compacted (this process)."""
        self._monotonic = time.monotonic

    @property
    def backend(self) -> str:
        """The index implementation: `sqlite-fts5` or `postgresql-tsvector`."""
        return "sqlite-fts5" if self.db.is_sqlite else "postgresql-tsvector"

    async def open(self) -> None:
        """Creates the tables and index if they are missing; counts the corpus."""
        await self.db.create_tables(metadata)
        if self.db.is_sqlite:
            async with self.db.transaction() as conn:
                await self.fts.create(conn)
        self.corpus = await self.totals()

    async def close(self) -> None:
        """Closes the database."""
        await self.db.close()

    # -- writes (inside the caller's transaction) ---------------------------------------

    def _row(self, e: Entry, now: float) -> dict[str, Any]:
        d = e.document
        row: dict[str, Any] = {
            "document_id": d.document_id,
            "source": d.source,
            "title": d.title,
            "text": d.text,
            "metadata": d.metadata,
            "words": e.words,
            "digest": e.digest,
            "updated_at": now,
        }
        if not self.db.is_sqlite:
            row.update({_PARAMS[c]: t for c, t in zip(_COLUMNS, e.texts, strict=True)})
        return row

    def _vector(self) -> dict[str, Any]:
        return {} if self.db.is_sqlite else {"search": self.tsvector.vector(_PARAMS)}

    def _old_texts(self, row: Any) -> tuple[str, str, str]:
        return indexed_texts(row.title, row.text, self._meta_strings(row.metadata or {}))

    async def write(
        self, conn: AsyncConnection, entries: Sequence[Entry], now: float
    ) -> list[IndexResult]:
        """Inserts new documents and replaces changed ones (ids are distinct)."""
        found = await conn.execute(
            select(
                documents.c.seq,
                documents.c.document_id,
                documents.c.digest,
                documents.c.title,
                documents.c.text,
                documents.c.metadata,
                documents.c.words,
            )
            .where(documents.c.document_id.in_([e.document.document_id for e in entries]))
            .with_for_update()
        )
        existing = {row.document_id: row for row in found}
        results: list[IndexResult] = []
        fresh: list[Entry] = []
        replaced: list[tuple[Entry, Any]] = []
        for e in entries:
            old = existing.get(e.document.document_id)
            if old is None:
                fresh.append(e)
            elif old.digest != e.digest:
                replaced.append((e, old))
            results.append(
                IndexResult(
                    e.document.document_id,
                    created=old is None,
                    changed=old is None or old.digest != e.digest,
                )
            )
        indexed: list[tuple[int, Entry]] = []
        if fresh:
            await conn.execute(
                documents.insert().values(**self._vector()),
                [{**self._row(e, now), "created_at": now} for e in fresh],
            )
            seqs = await conn.execute(
                select(documents.c.document_id, documents.c.seq).where(
                    documents.c.document_id.in_([e.document.document_id for e in fresh])
                )
            )
            seq_of = {doc_id: int(seq) for doc_id, seq in seqs}
            indexed += [(seq_of[e.document.document_id], e) for e in fresh]
        for e, old in replaced:
            if self.db.is_sqlite:
                await self.fts.remove(conn, key(int(old.seq), int(old.words)), self._old_texts(old))
            row = self._row(e, now)
            texts = {p: row.pop(p) for p in _PARAMS.values() if p in row}
            await conn.execute(
                update(documents)
                .where(documents.c.seq == int(old.seq))
                .values(**row, **self._vector()),
                texts,
            )
            await conn.execute(delete(metadata_entries).where(metadata_entries.c.seq == old.seq))
            indexed.append((int(old.seq), e))
        if self.db.is_sqlite:
            await self.fts.add(conn, [(key(seq, e.words), e.texts) for seq, e in indexed])
        filters = [{"seq": seq, "key": k, "value": v} for seq, e in indexed for k, v in e.filters]
        if filters:
            await conn.execute(metadata_entries.insert(), filters)
        self.uncompacted += len(fresh) + len(replaced)
        self.corpus = self.corpus.plus(
            len(fresh),
            sum(e.words for e in fresh) + sum(e.words - int(o.words) for e, o in replaced),
        )
        return results

    async def delete(self, conn: AsyncConnection, document_id: str) -> Document | None:
        """Removes a document and its index rows; returns what was removed."""
        found = await conn.execute(
            select(documents).where(documents.c.document_id == document_id).with_for_update()
        )
        row = found.first()
        if row is None:
            return None
        if self.db.is_sqlite:
            await self.fts.remove(conn, key(int(row.seq), int(row.words)), self._old_texts(row))
        await conn.execute(delete(metadata_entries).where(metadata_entries.c.seq == row.seq))
        await conn.execute(delete(documents).where(documents.c.seq == row.seq))
        self.corpus = self.corpus.plus(-1, -int(row.words))
        return document_from_row(row)

    async def compact(self) -> None:
        """Merges the full-text index into one segment (SQLite; PostgreSQL's GIN index
        needs no help). FTS5 adds a segment per transaction and merges only some of them
        as it goes; a query reads every segment, so after a burst of writes one merge
        makes searches up to twice as fast."""
        if self.db.is_sqlite:
            async with self.db.transaction() as conn:
                await conn.execute(
                    text(f"INSERT INTO {self.fts.name} ({self.fts.name}) VALUES ('optimize')")
                )
        self.uncompacted = 0

    # -- reads ----------------------------------------------------------------------------

    async def get(self, document_id: str) -> Document | None:
        """One document by id."""
        async with self.db.read() as conn:
            found = await conn.execute(
                select(documents).where(documents.c.document_id == document_id)
            )
            row = found.first()
        return document_from_row(row) if row else None

    async def by_seqs(self, seqs: Sequence[int]) -> dict[int, Document]:
        """Documents by seq (missing ones left out)."""
        if not seqs:
            return {}
        async with self.db.read() as conn:
            return await _fetch(conn, seqs)

    async def seq_of(self, document_id: str) -> int | None:
        """A document's seq, or None."""
        async with self.db.read() as conn:
            found = await conn.execute(
                select(documents.c.seq).where(documents.c.document_id == document_id)
            )
            seq = found.scalar_one_or_none()
        return None if seq is None else int(seq)

    async def _frequency(self, conn: AsyncConnection, term: str, columns: Sequence[str]) -> int:
        key = (term, tuple(columns))
        now = self._monotonic()
        cached = self._frequencies.get(key)
        if cached is not None and now - cached[1] < FREQUENCY_TTL_S:
            return cached[0]
        index = self.fts if self.db.is_sqlite else self.tsvector
        found = await index.frequency(conn, term, columns)
        if len(self._frequencies) >= MAX_CACHED_FREQUENCIES:
            self._frequencies.clear()
        self._frequencies[key] = (found, now)
        return found

    async def _weight(
        self, conn: AsyncConnection, terms: Sequence[str], columns: Sequence[str]
    ) -> float:
        total = 0.0
        for term in terms:
            total += idf(self.corpus.documents, await self._frequency(conn, term, columns))
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
        for i, (key, value) in enumerate(query.metadata):
            clauses.append(
                f"c.seq IN (SELECT seq FROM librarian_metadata WHERE key = :mk{i}"
                f" AND value = :mv{i})"
            )
            params[f"mk{i}"], params[f"mv{i}"] = key, value
        where = "".join(f" AND {c}" for c in clauses)
        if self.db.is_sqlite:
            params["match"] = self.fts.match(terms, columns)
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
        params["q"] = self.tsvector.tsquery(terms, columns)
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
        columns = _columns(fields)
        boosted = "title" in fields and len(fields) > 1
        n = offset + limit
        async with self.db.read() as conn:
            weight = await self._weight(conn, query.terms, columns)
            general = await self._shortest(conn, query.terms, columns, query, n)
            in_title = (
                await self._shortest(conn, query.terms, ["title"], query, n) if boosted else []
            )
            title_seqs = {seq for seq, _ in in_title}
            candidates = dict(general) | dict(in_title)
            ranked = sorted(
                (
                    (
                        relevance(
                            weight, words, self.corpus, TITLE_BOOST if seq in title_seqs else 1.0
                        ),
                        seq,
                    )
                    for seq, words in candidates.items()
                ),
                key=lambda pair: (-pair[0], -pair[1]),
            )[offset:n]
            found = await _fetch(conn, [seq for _, seq in ranked]) if ranked else {}
        return [(found[seq], score) for score, seq in ranked if seq in found]

    async def frequencies(self, terms: Sequence[str]) -> dict[str, int]:
        """How many documents hold each term (in any field)."""
        async with self.db.read() as conn:
            return {t: await self._frequency(conn, t, _COLUMNS) for t in terms}

    async def holding(self, term: str, limit: int, source: str = "") -> list[tuple[int, int]]:
        """Up to `limit` documents holding `term` (from `source`, if given), fewest words
        first: (seq, words)."""
        query = SearchQuery(terms=(term,), source=source)
        async with self.db.read() as conn:
            return await self._shortest(conn, [term], _COLUMNS, query, limit)

    async def totals(self) -> Corpus:
        """Documents and words in the database (every instance's writes)."""
        async with self.db.read() as conn:
            count, words = (
                await conn.execute(
                    select(func.count(), func.coalesce(func.sum(documents.c.words), 0))
                )
            ).one()
        return Corpus(int(count), int(words))

    async def sources(self, limit: int) -> list[SourceCount]:
        """The largest sources, most documents first."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(documents.c.source, func.count())
                .group_by(documents.c.source)
                .order_by(func.count().desc(), documents.c.source)
                .limit(limit)
            )
            return [SourceCount(str(s), int(n)) for s, n in rows]


async def _fetch(conn: AsyncConnection, seqs: Sequence[int]) -> dict[int, Document]:
    rows = await conn.execute(
        select(*(documents.c[name] for name in DOCUMENT_COLUMNS)).where(
            documents.c.seq.in_(list(seqs))
        )
    )
    return {int(r.seq): document_from_row(r) for r in rows}
