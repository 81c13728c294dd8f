"""Durable state of the librarian on SQLite or PostgreSQL, with its full-text index.

SQLite keeps a contentless FTS5 table `librarian_search` (columns title, body, meta; rowid
= `key(seq, words)`, so the index is stored in ranking order); PostgreSQL keeps a weighted
tsvector in each document row. Both are fed the words `services.common.fulltext` produced;
`ranking.py` reads them. Writes take the caller's connection, so a change and its
announcing event commit in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.fulltext import (
    Corpus,
    Fts5Table,
    TsvectorColumn,
    indexed_text,
)
from services.common.storage import Database
from services.kernels.librarian.model import (
    Document,
    IndexResult,
    NewDocument,
    SourceCount,
)
from services.kernels.librarian.ranking import COLUMNS, key
from services.kernels.librarian.schema import (
    document_from_row,
    documents,
    metadata,
    metadata_entries,
)

# Index columns per field (FIELDS order) and PostgreSQL weights.
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


def indexed_texts(title: str, body: str, meta_strings: Sequence[str]) -> tuple[str, str, str]:
    """The indexed words of each field."""
    return indexed_text(title), indexed_text(body), indexed_text(*meta_strings)


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
        self.fts = Fts5Table("librarian_search", COLUMNS)
        self.tsvector = TsvectorColumn("librarian_documents", "search", _WEIGHTS)
        # Collection size for the ranking, kept in memory: counted at open, then moved by
        # this process's writes (another instance's writes only shift weights slightly).
        self.corpus = Corpus(0, 0)
        self.uncompacted = 0
        """Documents written since the index was last compacted (this process)."""

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
            row.update({_PARAMS[c]: t for c, t in zip(COLUMNS, e.texts, strict=True)})
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
            return await self.fetch(conn, seqs)

    async def seq_of(self, document_id: str) -> int | None:
        """A document's seq, or None."""
        async with self.db.read() as conn:
            found = await conn.execute(
                select(documents.c.seq).where(documents.c.document_id == document_id)
            )
            seq = found.scalar_one_or_none()
        return None if seq is None else int(seq)

    async def fetch(self, conn: AsyncConnection, seqs: Sequence[int]) -> dict[int, Document]:
        """Documents by seq on the caller's connection (missing ones left out)."""
        rows = await conn.execute(
            select(*(documents.c[name] for name in DOCUMENT_COLUMNS)).where(
                documents.c.seq.in_(list(seqs))
            )
        )
        return {int(r.seq): document_from_row(r) for r in rows}

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
