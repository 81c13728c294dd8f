"""The librarian core on SQLite and PostgreSQL: indexing, BM25 search over fields, filters,
highlights, pagination, replacement and deletion, similar documents, announcements."""

from __future__ import annotations

import asyncio
import math

import pytest

from services.common.errors import InvalidArgument, NotFound
from services.common.fulltext import K1, B, idf
from services.kernels.librarian.librarian import (
    COMPACT_WHEN_IDLE_S,
    DELETED,
    INDEXED,
    MAX_BATCH,
    Librarian,
)
from services.kernels.librarian.model import NewDocument, SearchMode
from tests.support import ManualClock

PORT = NewDocument(
    "ops-1",
    "Restarting the gateway fixed the port timeout. Great result.",
    title="Port timeout",
    source="data_domain",
    metadata={"lang": "en", "priority": 3, "urgent": True},
)
CACHE = NewDocument(
    "ops-2",
    "The cache made reads twice as fast; a timeout is rarely hit now.",
    source="memory",
    metadata={"lang": "en"},
)
GARDEN = NewDocument(
    "garden-1",
    "Tomatoes and basil grow well together in a sunny garden.",
    title="Companion planting",
    source="memory",
    metadata={"lang": "fr"},
)
REPEAT = NewDocument(
    "ops-3",
    "Another port timeout happened after the restart of the port service.",
    source="data_domain",
)


async def _ids(librarian: Librarian, query: str, **kwargs: object) -> list[str]:
    hits, _ = await librarian.search(query, **kwargs)  # type: ignore[arg-type]  # test kwargs
    return [h.document.document_id for h in hits]


async def test_a_search_finds_documents_holding_every_word_best_first(
    librarian: Librarian,
) -> None:
    await librarian.index([PORT, CACHE, GARDEN, REPEAT])

    assert await _ids(librarian, "port timeout") == ["ops-1", "ops-3"]
    assert await _ids(librarian, "TIMEOUT") == ["ops-1", "ops-3", "ops-2"]
    assert await _ids(librarian, "zeppelin") == []


async def test_scores_follow_the_shared_bm25_formula_with_the_title_weighing_double(
    librarian: Librarian,
) -> None:
    await librarian.index([PORT, CACHE, GARDEN, REPEAT])
    hits, _ = await librarian.search("port timeout")
    corpus = librarian.store.corpus
    weight = idf(corpus.documents, 2) + idf(corpus.documents, 3)

    def expected(words: int, boost: float) -> float:
        raw = boost * weight * (K1 + 1) / (1 + K1 * (1 - B + B * words / corpus.average_words))
        return raw / (1 + raw)

    port, repeat = hits
    # "Port timeout" in the title doubles the first document's weight.
    assert math.isclose(port.score, expected(port.document.words, 2.0), rel_tol=1e-9)
    assert math.isclose(repeat.score, expected(repeat.document.words, 1.0), rel_tol=1e-9)


async def test_fields_restrict_where_the_words_must_be(librarian: Librarian) -> None:
    await librarian.index([PORT, CACHE, GARDEN, REPEAT])

    assert await _ids(librarian, "port", fields=["title"]) == ["ops-1"]
    assert await _ids(librarian, "restart", fields=["text"]) == ["ops-3"]
    assert await _ids(librarian, "lang", fields=["metadata"]) == ["garden-1", "ops-2", "ops-1"]
    assert await _ids(librarian, "lang", fields=["title", "text"]) == []
    with pytest.raises(InvalidArgument, match="fields"):
        await librarian.search("port", fields=["body"])


async def test_filters_on_source_and_metadata_narrow_the_results(librarian: Librarian) -> None:
    await librarian.index([PORT, CACHE, GARDEN, REPEAT])

    assert await _ids(librarian, "timeout", source="memory") == ["ops-2"]
    assert await _ids(librarian, "timeout", metadata={"lang": "en"}) == ["ops-1", "ops-2"]
    # Numbers and booleans compare as their text.
    assert await _ids(librarian, "timeout", metadata={"priority": "3", "urgent": "true"}) == [
        "ops-1"
    ]
    assert await _ids(librarian, "timeout", metadata={"lang": "fr"}) == []


async def test_highlights_point_at_the_matched_words_in_title_and_text(
    librarian: Librarian,
) -> None:
    await librarian.index([PORT])
    (hit,), _ = await librarian.search("port timeout")

    by_field = {h.field: h for h in hit.highlights}
    assert set(by_field) == {"title", "text"}
    text = by_field["text"]
    assert [text.fragment[s.start : s.end] for s in text.spans] == ["port", "timeout"]
    title = by_field["title"]
    assert [title.fragment[s.start : s.end] for s in title.spans] == ["Port", "timeout"]


async def test_a_long_text_is_highlighted_in_a_bounded_fragment_around_the_match(
    librarian: Librarian,
) -> None:
    filler = " ".join(f"word{i}" for i in range(400))
    await librarian.index([NewDocument("long", f"{filler} the quillwort blooms {filler}")])
    (hit,), _ = await librarian.search("quillwort")

    (text,) = hit.highlights
    assert len(text.fragment) <= 200
    assert [text.fragment[s.start : s.end] for s in text.spans] == ["quillwort"]


async def test_pages_follow_each_other_without_overlap_and_end(librarian: Librarian) -> None:
    await librarian.index(
        [NewDocument(f"doc-{i:02d}", f"shared word number {i}") for i in range(7)]
    )
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        hits, token = await librarian.search("shared", size=3, token=token)
        seen += [h.document.document_id for h in hits]
        pages += 1
        if not token:
            break
    assert pages == 3
    assert sorted(seen) == [f"doc-{i:02d}" for i in range(7)]
    assert len(set(seen)) == 7


async def test_a_page_token_of_another_search_is_refused(librarian: Librarian) -> None:
    await librarian.index([NewDocument(f"doc-{i}", "shared") for i in range(3)])
    _, token = await librarian.search("shared", size=1)

    with pytest.raises(InvalidArgument, match="page_token"):
        await librarian.search("shared", source="memory", size=1, token=token)


async def test_indexing_an_id_again_replaces_its_words(librarian: Librarian) -> None:
    await librarian.index([PORT])
    (result,) = await librarian.index(
        [NewDocument("ops-1", "Now this one is about tomatoes.", source="data_domain")]
    )

    assert (result.created, result.changed) == (False, True)
    assert await _ids(librarian, "timeout") == []
    assert await _ids(librarian, "tomatoes") == ["ops-1"]
    assert await _ids(librarian, "lang", fields=["metadata"]) == []
    assert (await librarian.get("ops-1")).text == "Now this one is about tomatoes."
    assert librarian.store.corpus.documents == 1


async def test_the_same_content_again_changes_nothing_and_announces_nothing(
    librarian: Librarian, clock: ManualClock
) -> None:
    await librarian.index([PORT])
    before = await librarian.get("ops-1")
    clock.advance(60)
    (result,) = await librarian.index([PORT])

    assert (result.created, result.changed) == (False, False)
    assert (await librarian.get("ops-1")).updated_at == before.updated_at
    assert [e.event_type for e in await librarian.events.pending(10)] == [INDEXED]


async def test_a_deleted_document_leaves_the_index_and_is_announced(
    librarian: Librarian,
) -> None:
    await librarian.index([PORT, REPEAT])
    assert await librarian.delete("ops-1") is True

    assert await _ids(librarian, "port") == ["ops-3"]
    with pytest.raises(NotFound):
        await librarian.get("ops-1")
    with pytest.raises(NotFound):
        await librarian.delete("ops-1")
    assert await librarian.delete("ops-1", missing_ok=True) is False
    events = await librarian.events.pending(10)
    assert [e.event_type for e in events] == [INDEXED, INDEXED, DELETED]
    assert events[-1].data == {"document_id": "ops-1", "source": "data_domain"}


async def test_concurrent_writes_all_land_and_on_sqlite_take_turns_on_one_connection(
    librarian: Librarian,
) -> None:
    # As the bus delivers several patterns at once: on SQLite each concurrent write used to
    # hold a pooled connection of its own (a thread, a malloc arena, a page cache).
    await librarian.index([REPEAT, GARDEN])

    async def created(doc: NewDocument) -> bool:
        (result,) = await librarian.index([doc])
        return result.created

    results = await asyncio.gather(
        *(created(NewDocument(f"turn-{i}", f"taking turns number {i}")) for i in range(8)),
        librarian.delete("ops-3"),
        created(NewDocument("garden-1", "Basil alone, in turns.")),
    )

    assert results == [True] * 9 + [False]
    assert sorted(await _ids(librarian, "turns", size=20)) == ["garden-1"] + [
        f"turn-{i}" for i in range(8)
    ]
    assert await _ids(librarian, "port") == []
    assert (await librarian.stats()).documents == 9
    if librarian.store.db.is_sqlite:
        assert librarian.store.db.engine.pool.checkedin() == 1  # type: ignore[attr-defined]


async def test_similar_documents_share_distinctive_words_nearest_first(
    librarian: Librarian,
) -> None:
    await librarian.index(
        [
            NewDocument("a", "The gateway port timeout came back after the gateway restart."),
            NewDocument("b", "A gateway restart cleared the port timeout on the gateway."),
            NewDocument("c", "The port was closed."),
            NewDocument("d", "Tomatoes and basil in the garden."),
            NewDocument("e", "Basil likes a sunny garden."),
        ]
    )
    found_id, hits = await librarian.similar("a", limit=5)

    assert found_id == "a"
    ids = [h.document.document_id for h in hits]
    assert ids[:2] == ["b", "c"]
    assert "a" not in ids
    assert "e" not in ids
    assert all(0 < h.score < 1 for h in hits)
    assert hits[0].score > hits[1].score


async def test_similar_accepts_a_contribution_id_for_an_indexed_contribution(
    librarian: Librarian,
) -> None:
    await librarian.index(
        [
            NewDocument("memory.c-1", "caching halves latency of reads", source="memory"),
            NewDocument("memory.c-2", "caching of reads", source="memory"),
        ]
    )
    found_id, hits = await librarian.similar("c-1")

    assert found_id == "memory.c-1"
    assert [h.document.document_id for h in hits] == ["memory.c-2"]
    with pytest.raises(NotFound):
        await librarian.similar("nothing-here")


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (NewDocument("", "text"), "document.id"),
        (NewDocument("bad id", "text"), "document.id"),
        (NewDocument("x", "   "), "document.text"),
        (NewDocument("x", "t" * 1_000_001), "document.text"),
        (NewDocument("x", "text", source="no spaces"), "document.source"),
        (NewDocument("x", "text", metadata={f"k{i}": i for i in range(65)}), "document.metadata"),
    ],
)
async def test_invalid_documents_are_refused_naming_the_field(
    librarian: Librarian, document: NewDocument, field: str
) -> None:
    with pytest.raises(InvalidArgument) as caught:
        await librarian.index([document])
    assert caught.value.message.startswith(field)


async def test_a_batch_with_a_repeated_id_or_too_many_documents_is_refused(
    librarian: Librarian,
) -> None:
    with pytest.raises(InvalidArgument, match="repeated"):
        await librarian.index([PORT, PORT])
    with pytest.raises(InvalidArgument, match=f"at most {MAX_BATCH}"):
        await librarian.index([NewDocument(f"d{i}", "x") for i in range(MAX_BATCH + 1)])
    assert librarian.store.corpus.documents == 0


async def test_stats_count_documents_and_sources_and_say_search_is_full_text(
    librarian: Librarian,
) -> None:
    await librarian.index([PORT, CACHE, GARDEN, REPEAT])
    await librarian.delete("garden-1")
    stats = await librarian.stats()

    assert stats.documents == 3
    assert [(s.source, s.documents) for s in stats.sources] == [
        ("data_domain", 2),
        ("memory", 1),
    ]
    assert stats.mode is SearchMode.FULL_TEXT
    assert stats.backend in ("sqlite-fts5", "postgresql-tsvector")


async def test_a_reopened_librarian_counts_its_corpus_from_the_database(
    librarian: Librarian, clock: ManualClock
) -> None:
    await librarian.index([PORT, CACHE])
    reopened = Librarian(librarian.store.db, clock)
    await reopened.open()

    assert reopened.store.corpus == librarian.store.corpus
    assert await _ids(reopened, "timeout") == ["ops-1", "ops-2"]


async def test_the_index_is_compacted_once_writing_pauses_and_still_finds_the_same(
    librarian: Librarian, clock: ManualClock
) -> None:
    await librarian.index([NewDocument(f"d{i}", f"common word {i}") for i in range(1000)])
    before = await _ids(librarian, "common", size=20)

    assert await librarian.maintain() is False  # writing has not paused yet
    clock.advance(COMPACT_WHEN_IDLE_S + 1)
    assert await librarian.maintain() is True
    assert librarian.store.uncompacted == 0
    assert await librarian.maintain() is False
    assert await _ids(librarian, "common", size=20) == before
    assert await _ids(librarian, "999") == ["d999"]


async def test_shorter_documents_rank_first_and_ties_go_to_the_newest(
    librarian: Librarian,
) -> None:
    await librarian.index(
        [
            NewDocument("long", "timeout " + "padding " * 20),
            NewDocument("short-old", "timeout here"),
            NewDocument("short-new", "timeout there"),
        ]
    )
    assert await _ids(librarian, "timeout") == ["short-new", "short-old", "long"]
