"""The librarian core: validation, indexing with events, search, similar documents.

Contract:
- `index` stores documents by id: a new id is created, a known id with other content is
  replaced (its old words leave the index), the same content again changes nothing. Each
  change is announced (`librarian.document.indexed` / `librarian.document.deleted`) through
  the outbox in the same transaction.
- `search` returns documents holding every query word (in the fields asked), ranked by
  BM25 (`services.common.fulltext`, a title match weighing double), filtered by source and
  metadata, with highlights, one page at a time.
- `similar` returns the documents nearest to a stored one: the document's most
  distinctive words (in-document frequency times idf, Lucene's MoreLikeThis) are looked up
  one by one and each other document is ranked by the BM25 relevance of the words it
  shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError

from services.common.errors import Aborted, InvalidArgument, NotFound
from services.common.fulltext import idf, query_words, relevance, words
from services.common.outbox import Outbox
from services.common.pagination import decode_token, encode_token, page_size
from services.common.storage import Database
from services.common.validation import require_id, require_text
from services.kernels.librarian.highlights import highlights
from services.kernels.librarian.model import (
    FIELDS,
    Document,
    Hit,
    IndexResult,
    NewDocument,
    SearchMode,
    SearchQuery,
    Stats,
)
from services.kernels.librarian.ranking import Ranking
from services.kernels.librarian.schema import outbox
from services.kernels.librarian.store import Entry, LibrarianStore, indexed_texts

MEMORY_PREFIX = "memory"
"""Id prefix of indexed shared-memory contributions (`memory.<contribution_id>`)."""

INDEXED = "librarian.document.indexed"
DELETED = "librarian.document.deleted"

MAX_TEXT_CHARS = 1_000_000
MAX_TITLE_CHARS = 1024
MAX_BATCH = 1000
MAX_METADATA_KEYS = 64
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 256
MAX_METADATA_BYTES = 64 * 1024
MAX_FILTERS = 16
MAX_SEARCH_RESULTS = 10_000
MAX_SIMILAR = 100

COMPACT_AFTER_DOCUMENTS = 1000
"""Writes after which the index is compacted, once writing pauses."""
COMPACT_WHEN_IDLE_S = 2.0
"""How long writing must pause before a compaction."""

SIMILAR_CANDIDATE_WORDS = 48
"""Most frequent words of a document considered for `similar`."""
SIMILAR_QUERY_WORDS = 12
"""Most distinctive of those actually looked up."""
SIMILAR_POSTINGS = 2000
"""Documents read per looked-up word (the newest)."""


def metadata_strings(value: Any) -> list[str]:
    """Every key and scalar value of a metadata object, as the `metadata` field indexes."""
    return list(_strings(value))


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif value is not None:
        yield scalar_text(value)


def scalar_text(value: Any) -> str:
    """A metadata scalar as filters compare it: true/false, integers without '.0'."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _filters(meta: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The filterable entries of metadata: top-level scalars, as strings."""
    return tuple(
        (key, scalar_text(value)[:MAX_METADATA_VALUE_CHARS])
        for key, value in sorted(meta.items())
        if value is not None and not isinstance(value, dict | list)
    )


def _digest(*parts: Any) -> str:
    raw = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()


def validate(doc: NewDocument, field: str = "document") -> NewDocument:
    """The document, or InvalidArgument naming the field and the rule."""
    require_id(f"{field}.id", doc.document_id)
    require_text(f"{field}.text", doc.text, max_length=MAX_TEXT_CHARS)
    require_text(f"{field}.title", doc.title, max_length=MAX_TITLE_CHARS)
    if doc.source:
        require_id(f"{field}.source", doc.source)
    if not doc.text.strip() and not doc.title.strip():
        raise InvalidArgument(f"{field}.text", "is required (or a title)")
    if len(doc.metadata) > MAX_METADATA_KEYS:
        raise InvalidArgument(f"{field}.metadata", f"must have at most {MAX_METADATA_KEYS} keys")
    for key in doc.metadata:
        if not key or len(key) > MAX_METADATA_KEY_CHARS:
            raise InvalidArgument(
                f"{field}.metadata", f"keys must be 1-{MAX_METADATA_KEY_CHARS} characters"
            )
    size = len(json.dumps(doc.metadata, separators=(",", ":"), ensure_ascii=False))
    if size > MAX_METADATA_BYTES:
        raise InvalidArgument(f"{field}.metadata", f"must be at most {MAX_METADATA_BYTES} bytes")
    return doc


def entry(doc: NewDocument) -> Entry:
    """What the store keeps for a validated document."""
    texts = indexed_texts(doc.title, doc.text, metadata_strings(doc.metadata))
    return Entry(
        document=doc,
        texts=texts,
        words=sum(len(t.split()) for t in texts),
        digest=_digest(doc.title, doc.text, doc.source, doc.metadata),
        filters=_filters(doc.metadata),
    )


class Librarian:
    """Documents, their index, search and similar documents, with announcements.

    Args:
        db: The database.
        clock: Injectable clock for tests.
    """

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.store = LibrarianStore(db, metadata_strings)
        self.ranking = Ranking(self.store)
        self.events = Outbox(db, outbox, "librarian")
        self._clock = clock
        self._committed: list[Callable[[], None]] = []
        self._last_write = 0.0
        # SQLite takes one writer at a time, so concurrent writes (the bus pushes each
        # subscribed pattern on its own) gain nothing from running at once, and cost: each
        # holds a pooled connection, with its own thread (so its own malloc arena) and page
        # cache, while it waits for the database lock, and each commit makes the other
        # connections drop their page caches (WAL) and read them in again. Under a steady
        # load the pool grew to a connection per concurrent write, and glibc kept what
        # their threads freed: memory that grew and that malloc_trim could not return.
        # Writers queue here instead, holding no connection. PostgreSQL writes in parallel.
        self._writes: contextlib.AbstractAsyncContextManager[Any] = (
            asyncio.Lock() if db.is_sqlite else contextlib.nullcontext()
        )

    @property
    def mode(self) -> SearchMode:
        """How searches rank: full text (no embedding model is part of this build)."""
        return SearchMode.FULL_TEXT

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Calls `callback` after each committed change (wakes the outbox relay)."""
        self._committed.append(callback)

    def _notify(self) -> None:
        self._last_write = self._clock()
        for callback in self._committed:
            callback()

    async def open(self) -> None:
        """Creates the tables and index if they are missing."""
        await self.store.open()

    async def close(self) -> None:
        """Closes the database."""
        await self.store.close()

    # -- writes ---------------------------------------------------------------------------

    async def index(self, docs: Sequence[NewDocument]) -> list[IndexResult]:
        """Creates or replaces documents; at most MAX_BATCH, ids distinct."""
        if not docs:
            raise InvalidArgument("documents", "must not be empty")
        if len(docs) > MAX_BATCH:
            raise InvalidArgument("documents", f"must have at most {MAX_BATCH} entries")
        seen: set[str] = set()
        for i, doc in enumerate(docs):
            validate(doc, f"documents[{i}]" if len(docs) > 1 else "document")
            if doc.document_id in seen:
                raise InvalidArgument(f"documents[{i}].id", "is repeated in the batch")
            seen.add(doc.document_id)
        entries = [entry(d) for d in docs]
        try:
            async with self._writes:
                results = await self._write(entries, docs)
        except IntegrityError:
            # Another instance created one of these ids between our read and our insert.
            self.store.corpus = await self.store.totals()
            raise Aborted("a document of this batch was indexed concurrently; retry") from None
        if any(r.changed for r in results):
            self._notify()
        return results

    async def _write(
        self, entries: Sequence[Entry], docs: Sequence[NewDocument]
    ) -> list[IndexResult]:
        async with self.store.db.transaction() as conn:
            results = await self.store.write(conn, entries, self._clock())
            announced = [
                (
                    INDEXED,
                    r.document_id,
                    {"document_id": r.document_id, "source": d.source, "created": r.created},
                )
                for r, d in zip(results, docs, strict=True)
                if r.changed
            ]
            await self.events.enqueue_many(conn, announced)
        return results

    async def delete(self, document_id: str, *, missing_ok: bool = False) -> bool:
        """Removes a document; NotFound when it is unknown (False with `missing_ok`)."""
        require_id("id", document_id)
        async with self._writes, self.store.db.transaction() as conn:
            removed = await self.store.delete(conn, document_id)
            if removed is not None:
                await self.events.enqueue(
                    conn,
                    DELETED,
                    {"document_id": document_id, "source": removed.source},
                    subject=document_id,
                )
        if removed is None:
            if missing_ok:
                return False
            raise NotFound("document", document_id)
        self._notify()
        return True

    async def maintain(self) -> bool:
        """Compacts the index when enough was written and writing has paused; returns
        whether it did (called periodically by the server)."""
        store = self.store
        if store.uncompacted < COMPACT_AFTER_DOCUMENTS:
            return False
        if self._clock() - self._last_write < COMPACT_WHEN_IDLE_S:
            return False
        async with self._writes:
            await store.compact()
        return True

    # -- reads ----------------------------------------------------------------------------

    async def get(self, document_id: str) -> Document:
        """One document; NotFound when it is unknown."""
        require_id("id", document_id)
        found = await self.store.get(document_id)
        if found is None:
            raise NotFound("document", document_id)
        return found

    async def search(
        self,
        query: str,
        *,
        fields: Sequence[str] = (),
        source: str = "",
        metadata: Mapping[str, str] | None = None,
        size: int = 0,
        token: str = "",
    ) -> tuple[list[Hit], str]:
        """One page of hits, best first, and the next page's token ("" after the last)."""
        for f in fields:
            if f not in FIELDS:
                raise InvalidArgument("fields", f"must be among {', '.join(FIELDS)}, not {f!r}")
        filters = dict(metadata or {})
        if len(filters) > MAX_FILTERS:
            raise InvalidArgument("metadata", f"must have at most {MAX_FILTERS} filters")
        for key, value in filters.items():
            if not key or len(key) > MAX_METADATA_KEY_CHARS:
                raise InvalidArgument("metadata", f"keys must be 1-{MAX_METADATA_KEY_CHARS} chars")
            if len(value) > MAX_METADATA_VALUE_CHARS:
                raise InvalidArgument(
                    f"metadata[{key!r}]", f"must be at most {MAX_METADATA_VALUE_CHARS} characters"
                )
        search = SearchQuery(
            terms=tuple(query_words(query)),
            fields=tuple(f for f in FIELDS if f in fields),
            source=require_id("source", source) if source else "",
            metadata=tuple(sorted(filters.items())),
        )
        limit = page_size(size)
        fingerprint = _digest(search.terms, search.fields, search.source, search.metadata)[:16]
        offset = 0
        position = decode_token(token)
        if position is not None:
            if position.get("f") != fingerprint or not isinstance(position.get("o"), int):
                raise InvalidArgument("page_token", "belongs to a different query or filters")
            offset = position["o"]
        limit = max(0, min(limit, MAX_SEARCH_RESULTS - offset))
        if limit == 0:
            return [], ""
        ranked = await self.ranking.search(search, offset, limit + 1)
        next_token = ""
        if len(ranked) > limit:
            ranked = ranked[:limit]
            if offset + limit < MAX_SEARCH_RESULTS:
                next_token = encode_token({"o": offset + limit, "f": fingerprint})
        terms = set(search.terms)
        hits = [Hit(d, score, highlights(d.title, d.text, terms)) for d, score in ranked]
        return hits, next_token

    def terms(self, query: str) -> list[str]:
        """The words a query searches for, as the index sees them."""
        return query_words(query)

    async def similar(
        self, document_id: str, *, limit: int = 10, source: str = ""
    ) -> tuple[str, list[Hit]]:
        """The documents nearest to a stored one, nearest first (itself excluded), and
        the id it was found under: a shared-memory contribution id alone finds
        `memory.<id>`."""
        require_id("id", document_id)
        if not 1 <= limit <= MAX_SIMILAR:
            raise InvalidArgument("limit", f"must be between 1 and {MAX_SIMILAR}")
        if source:
            require_id("source", source)
        own = await self.store.seq_of(document_id)
        if own is None and not document_id.startswith(f"{MEMORY_PREFIX}."):
            document_id = f"{MEMORY_PREFIX}.{document_id}"
            own = await self.store.seq_of(document_id)
        document = await self.get(document_id)
        counts = Counter(w for w in words(f"{document.title} {document.text}") if len(w) > 2)
        candidates = [w for w, _ in counts.most_common(SIMILAR_CANDIDATE_WORDS)]
        frequencies = await self.ranking.frequencies(candidates)
        corpus = self.store.corpus
        # Words only this document holds find nothing; the rest weigh tf * idf.
        weights = {
            w: idf(corpus.documents, frequencies[w]) for w in candidates if frequencies[w] > 1
        }
        chosen = sorted(weights, key=lambda w: (-counts[w] * weights[w], w))
        shared: dict[int, float] = {}
        lengths: dict[int, int] = {}
        for word in chosen[:SIMILAR_QUERY_WORDS]:
            for seq, length in await self.ranking.holding(word, SIMILAR_POSTINGS, source):
                if seq != own:
                    shared[seq] = shared.get(seq, 0.0) + weights[word]
                    lengths[seq] = length
        # The shared words' idf sum, normalized by length as search does.
        scored = sorted(
            ((relevance(shared[s], lengths[s], corpus), s) for s in shared),
            key=lambda pair: (-pair[0], -pair[1]),
        )[:limit]
        found = await self.store.by_seqs([s for _, s in scored])
        return document_id, [Hit(found[s], score) for score, s in scored if s in found]

    async def stats(self, *, top_sources: int = 20) -> Stats:
        """How many documents and words the index holds, and its largest sources."""
        totals = await self.store.totals()
        return Stats(
            documents=totals.documents,
            words=totals.words,
            sources=tuple(await self.store.sources(top_sources)),
            backend=self.store.backend,
            mode=self.mode,
        )
