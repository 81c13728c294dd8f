"""Durable state of the librarian on SQLite or PostgreSQL, with its full-text index.

SQLite keeps a contentless FTS5 table `librarian_search` (rowid = document seq, columns
title, body, meta); PostgreSQL keeps a weighted tsvector in each document row. Both are
fed the words `services.common.fulltext` produced and ranked by its BM25 arithmetic, so the
two backends return the same documents in the same order. Writes take the caller's
connection, so a change and its announcing event commit in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.fulltext import (
    Corpus,
    Fts5Table,
    TsvectorColumn,
    indexed_text,
    ranking_params,
    relevance_sql,
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

    def __init__(self, db: Database, meta_strings: Any) -> None:
        self.db = db
        self._meta_strings = meta_strings
        self.fts = Fts5Table("librarian_search", _COLUMNS)
        self.tsvector = TsvectorColumn("librarian_documents", "search", _WEIGHTS)
        # Collection size for the ranking, kept in memory: counted at open, then moved by
        # this process's writes (another instance's writes only shift weights slightly).
        self.corpus = Corpus(0, 0)

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
        async with self.db.read() as conn:
            count, words = (
                await conn.execute(
                    select(func.count(), func.coalesce(func.sum(documents.c.words), 0))
                )
            ).one()
        self.corpus = Corpus(int(count), int(words))

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
                await self.fts.remove(conn, int(old.seq), self._old_texts(old))
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
            await self.fts.add(conn, [(seq, e.texts) for seq, e in indexed])
        filters = [{"seq": seq, "key": k, "value": v} for seq, e in indexed for k, v in e.filters]
        if filters:
            await conn.execute(metadata_entries.insert(), filters)
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
            await self.fts.remove(conn, int(row.seq), self._old_texts(row))
        await conn.execute(delete(metadata_entries).where(metadata_entries.c.seq == row.seq))
        await conn.execute(delete(documents).where(documents.c.seq == row.seq))
        self.corpus = self.corpus.plus(-1, -int(row.words))
        return document_from_row(row)

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
            rows = await conn.execute(select(documents).where(documents.c.seq.in_(list(seqs))))
            return {int(r.seq): document_from_row(r) for r in rows}

    async def seq_of(self, document_id: str) -> int | None:
        """A document's seq, or None."""
        async with self.db.read() as conn:
            found = await conn.execute(
                select(documents.c.seq).where(documents.c.document_id == document_id)
            )
            seq = found.scalar_one_or_none()
        return None if seq is None else int(seq)

    async def search(
        self, query: SearchQuery, offset: int, limit: int
    ) -> list[tuple[Document, float]]:
        """One page of matches, best first (ties: newest first)."""
        fields = list(query.fields) if query.fields else list(FIELDS)
        columns = _columns(fields)
        params: dict[str, Any] = {"lim": limit, "off": offset}
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
        boosted = "title" in fields and len(fields) > 1
        async with self.db.read() as conn:
            if self.db.is_sqlite:
                weight = await self.fts.weight(conn, query.terms, self.corpus, columns)
                params["match"] = self.fts.match(query.terms, columns)
                matches = (
                    "FROM librarian_search JOIN librarian_documents AS c"
                    " INDEXED BY librarian_documents_rank ON c.seq = librarian_search.rowid"
                    " WHERE librarian_search MATCH :match"
                )
                in_title = (
                    "c.seq IN (SELECT rowid FROM librarian_search"
                    " WHERE librarian_search MATCH :title_match)"
                )
                params["title_match"] = self.fts.match(query.terms, ["title"])
            else:
                weight = await self.tsvector.weight(conn, query.terms, self.corpus, columns)
                params["q"] = self.tsvector.tsquery(query.terms, columns)
                matches = "FROM librarian_documents AS c WHERE c.search @@ to_tsquery('simple', :q)"
                in_title = "c.search @@ to_tsquery('simple', :title_match)"
                params["title_match"] = self.tsvector.tsquery(query.terms, ["title"])
            if not boosted:
                params.pop("title_match")
            boost = (
                f"CASE WHEN {in_title} THEN CAST({TITLE_BOOST} AS DOUBLE PRECISION) ELSE 1 END"
                if boosted
                else "1"
            )
            params.update(ranking_params(weight, self.corpus))
            where = "".join(f" AND {c}" for c in clauses)
            sql = (
                "SELECT seq, rel FROM ("
                f" SELECT c.seq AS seq, {relevance_sql('c.words', boost)} AS rel"
                f" {matches}{where}"
                ") AS m ORDER BY rel DESC, seq DESC LIMIT :lim OFFSET :off"
            )
            ranked = [(int(s), float(r)) for s, r in await conn.execute(text(sql), params)]
        found = await self.by_seqs([s for s, _ in ranked])
        return [(found[s], r) for s, r in ranked if s in found]

    async def frequencies(self, terms: Sequence[str]) -> dict[str, int]:
        """How many documents hold each term (in any field)."""
        index = self.fts if self.db.is_sqlite else self.tsvector
        async with self.db.read() as conn:
            return {t: await index.frequency(conn, t) for t in terms}

    async def holding(self, term: str, limit: int) -> list[int]:
        """Seqs of up to `limit` documents holding `term`, newest first."""
        async with self.db.read() as conn:
            if self.db.is_sqlite:
                return await self.fts.rowids(conn, term, limit)
            return await self.tsvector.rowids(conn, term, limit)

    async def lengths(self, seqs: Sequence[int]) -> dict[int, tuple[int, str]]:
        """Word count and source of documents by seq."""
        if not seqs:
            return {}
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(documents.c.seq, documents.c.words, documents.c.source).where(
                    documents.c.seq.in_(list(seqs))
                )
            )
            return {int(s): (int(w), str(src)) for s, w, src in rows}

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
