"""The shared memory core without gRPC, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from services.memory.confidence import Evidence
from services.memory.memory import SharedMemory
from services.memory.model import (
    ChangeKind,
    Contribution,
    ContributorOrder,
    NewContribution,
    Outcome,
    VerdictKind,
)
from services.memory.text import document
from tests.support import ManualClock, eventually

SEED_CONTENT = {"issue": "port_timeout", "solution": "restart_component", "success_rate": 0.95}


def new(domain_id: str = "healing_domain", **overrides: Any) -> NewContribution:
    fields: dict[str, Any] = {
        "domain_id": domain_id,
        "contribution_type": "optimization",
        "content": SEED_CONTENT,
    }
    fields.update(overrides)
    return NewContribution(**fields)


async def outbox_types(memory: SharedMemory) -> list[str]:
    return [e.event_type for e in await memory.outbox.pending(1000)]


async def test_contribute_stores_the_seed_body_with_the_default_confidence(
    memory: SharedMemory, clock: ManualClock
) -> None:
    contribution, created = await memory.contribute(new())

    assert created
    assert contribution.content == SEED_CONTENT
    assert contribution.confidence == pytest.approx(0.5)
    assert contribution.created_at == clock.now
    stored, verdicts, applications = await memory.get(contribution.contribution_id)
    assert stored == contribution
    assert (verdicts, applications) == ([], [])


async def test_contribute_announces_through_the_outbox_in_the_same_transaction(
    memory: SharedMemory,
) -> None:
    contribution, _ = await memory.contribute(new(tags=("ops",)))

    [event] = await memory.outbox.pending(10)
    assert event.event_type == "memory.contributed"
    assert event.source_domain == "memory"
    assert event.subject == contribution.contribution_id
    assert event.data["author_domain"] == "healing_domain"
    assert event.data["tags"] == ["ops"]


async def test_a_repeated_request_id_returns_the_first_contribution(memory: SharedMemory) -> None:
    first, created = await memory.contribute(new(request_id="r-1"))
    again, created_again = await memory.contribute(new(request_id="r-1"))

    assert created
    assert not created_again
    assert again.contribution_id == first.contribution_id
    assert (await memory.stats()).total == 1
    assert await outbox_types(memory) == ["memory.contributed"]


async def test_a_request_id_reused_for_other_content_is_already_exists(
    memory: SharedMemory,
) -> None:
    await memory.contribute(new(request_id="r-1"))
    with pytest.raises(AlreadyExists):
        await memory.contribute(new(request_id="r-1", content={"other": "thing"}))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"domain_id": ""}, "domain_id"),
        ({"domain_id": "has space"}, "domain_id"),
        ({"contribution_type": ""}, "contribution_type"),
        ({"contribution_type": "t" * 65}, "contribution_type"),
        ({"tags": ("ok", "bad tag")}, "tags[1]"),
        ({"tags": tuple(f"t{i}" for i in range(33))}, "tags"),
        ({"initial_confidence": 1.5}, "initial_confidence"),
        ({"initial_confidence": float("nan")}, "initial_confidence"),
        ({"request_id": "r" * 129}, "request_id"),
        ({"content": {"blob": "x" * 70_000}}, "content"),
    ],
)
async def test_bad_contributions_name_the_field_and_store_nothing(
    memory: SharedMemory, overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await memory.contribute(new(**overrides))
    assert raised.value.field == field
    assert (await memory.stats()).total == 0
    assert await memory.outbox.count() == 0


async def test_verification_by_another_domain_raises_confidence_once(
    memory: SharedMemory,
) -> None:
    c, _ = await memory.contribute(new())

    verified, changed = await memory.verify(c.contribution_id, "ai_domain", "works here")
    again, changed_again = await memory.verify(c.contribution_id, "ai_domain")

    assert changed
    assert not changed_again
    assert verified.evidence.verifications == 1
    assert verified.confidence == pytest.approx(2 / 3)
    assert again.confidence == verified.confidence
    assert await outbox_types(memory) == ["memory.contributed", "memory.verified"]


async def test_the_author_cannot_verify_or_dispute_its_own_contribution(
    memory: SharedMemory,
) -> None:
    c, _ = await memory.contribute(new())
    with pytest.raises(FailedPrecondition):
        await memory.verify(c.contribution_id, "healing_domain")
    with pytest.raises(FailedPrecondition):
        await memory.dispute(c.contribution_id, "healing_domain", "I was wrong")
    assert (await memory.get(c.contribution_id))[0].confidence == pytest.approx(0.5)


async def test_disputing_after_verifying_replaces_the_verdict(memory: SharedMemory) -> None:
    c, _ = await memory.contribute(new())
    await memory.verify(c.contribution_id, "ai_domain")

    disputed, changed = await memory.dispute(c.contribution_id, "ai_domain", "fails on Tuesdays")

    assert changed
    assert (disputed.evidence.verifications, disputed.evidence.disputes) == (0, 1)
    assert disputed.confidence == pytest.approx(1 / 3)
    _, verdicts, _ = await memory.get(c.contribution_id)
    assert [(v.domain_id, v.kind, v.reason) for v in verdicts] == [
        ("ai_domain", VerdictKind.DISPUTED, "fails on Tuesdays")
    ]


async def test_a_dispute_needs_a_reason(memory: SharedMemory) -> None:
    c, _ = await memory.contribute(new())
    with pytest.raises(InvalidArgument) as raised:
        await memory.dispute(c.contribution_id, "ai_domain", "")
    assert raised.value.field == "reason"


async def test_verdicts_and_applications_on_unknown_ids_are_not_found(
    memory: SharedMemory,
) -> None:
    with pytest.raises(NotFound):
        await memory.verify("no-such-id", "ai_domain")
    with pytest.raises(NotFound):
        await memory.dispute("no-such-id", "ai_domain", "why")
    with pytest.raises(NotFound):
        await memory.apply("no-such-id", "ai_domain", Outcome.SUCCESS)
    with pytest.raises(NotFound):
        await memory.get("no-such-id")


async def test_applications_count_each_time_and_retries_count_once(memory: SharedMemory) -> None:
    c, _ = await memory.contribute(new())

    await memory.apply(c.contribution_id, "healing_domain", Outcome.SUCCESS, "fixed", "a-1")
    _, first, created = await memory.apply(c.contribution_id, "ai_domain", Outcome.SUCCESS)
    _, retried, created_again = await memory.apply(
        c.contribution_id, "healing_domain", Outcome.SUCCESS, "fixed", "a-1"
    )
    after, _, _ = await memory.apply(c.contribution_id, "ai_domain", Outcome.FAILURE, "no luck")

    assert created
    assert not created_again
    assert (after.evidence.successes, after.evidence.failures) == (2, 1)
    assert after.confidence == pytest.approx((1 + 2) / (2 + 3))
    _, _, recent = await memory.get(c.contribution_id)
    assert len(recent) == 3
    assert retried.outcome is Outcome.SUCCESS
    assert first.application_id != retried.application_id


async def test_apply_requires_an_outcome(memory: SharedMemory) -> None:
    c, _ = await memory.contribute(new())
    with pytest.raises(InvalidArgument) as raised:
        await memory.apply(c.contribution_id, "ai_domain", None)
    assert raised.value.field == "outcome"


async def test_the_seed_query_finds_knowledge_once_evidence_makes_it_confident(
    memory: SharedMemory,
) -> None:
    c, _ = await memory.contribute(new())
    await memory.contribute(new(content={"issue": "disk full", "solution": "rotate logs"}))

    before, _ = await memory.query("port timeout", min_confidence=0.7)
    await memory.verify(c.contribution_id, "ai_domain")
    await memory.apply(c.contribution_id, "data_domain", Outcome.SUCCESS)
    after, _ = await memory.query("port timeout", min_confidence=0.7)

    assert before == []
    assert [h.contribution.contribution_id for h in after] == [c.contribution_id]
    assert 0 < after[0].relevance < 1
    assert after[0].score == pytest.approx(after[0].relevance * after[0].contribution.confidence)


async def test_query_requires_every_word_and_searches_type_and_tags(
    memory: SharedMemory,
) -> None:
    a, _ = await memory.contribute(new(tags=("network",)))
    await memory.contribute(new(content={"issue": "port scan detected"}))

    assert [h.contribution.contribution_id for h in (await memory.query("PORT timeout"))[0]] == [
        a.contribution_id
    ]
    assert len((await memory.query("optimization"))[0]) == 2
    assert [h.contribution.contribution_id for h in (await memory.query("network"))[0]] == [
        a.contribution_id
    ]
    assert (await memory.query("nonexistentword"))[0] == []


async def test_query_ranks_by_relevance_times_confidence(memory: SharedMemory) -> None:
    low, _ = await memory.contribute(new(initial_confidence=0.2))
    high, _ = await memory.contribute(new(initial_confidence=0.9))
    mid, _ = await memory.contribute(new(initial_confidence=0.6))
    for i in range(5):
        await memory.contribute(new(content={"unrelated": f"filler {i}"}))

    hits, _ = await memory.query("restart")

    assert [h.contribution.contribution_id for h in hits] == [
        high.contribution_id,
        mid.contribution_id,
        low.contribution_id,
    ]
    assert hits[0].score > hits[1].score > hits[2].score


async def test_query_prefers_the_more_relevant_text_at_equal_confidence(
    memory: SharedMemory,
) -> None:
    weak, _ = await memory.contribute(new(content={"note": "cache " + "other words " * 30}))
    strong, _ = await memory.contribute(new(content={"note": "cache cache cache"}))
    for i in range(5):
        await memory.contribute(new(content={"unrelated": f"filler {i}"}))

    hits, _ = await memory.query("cache")

    assert [h.contribution.contribution_id for h in hits] == [
        strong.contribution_id,
        weak.contribution_id,
    ]


async def test_relevance_follows_the_documented_formula_on_every_backend(
    memory: SharedMemory,
) -> None:
    await memory.contribute(new(content={"note": "alpha beta"}))  # optimization note alpha beta
    await memory.contribute(new(content={"note": "alpha"}))  # optimization note alpha
    await memory.contribute(new(content={"other": "gamma"}))  # optimization other gamma

    hits, _ = await memory.query("alpha beta")

    n_docs, avg_words = 3, (4 + 3 + 3) / 3
    weight = math.log(1 + (n_docs - 2 + 0.5) / 2.5) + math.log(1 + (n_docs - 1 + 0.5) / 1.5)
    r = weight * 2.2 / (1 + 1.2 * (0.25 + 0.75 * 4 / avg_words))
    assert len(hits) == 1
    assert hits[0].relevance == pytest.approx(r / (1 + r))


async def test_query_filters_by_type_domain_tags_and_confidence(memory: SharedMemory) -> None:
    target, _ = await memory.contribute(
        new("ai_domain", contribution_type="insight", tags=("ops", "db"), initial_confidence=0.8)
    )
    await memory.contribute(new("ai_domain", contribution_type="insight", tags=("ops",)))
    await memory.contribute(new("data_domain", contribution_type="insight", tags=("ops", "db")))
    await memory.contribute(new("ai_domain", tags=("ops", "db"), initial_confidence=0.8))

    hits, _ = await memory.query(
        "timeout",
        contribution_type="insight",
        domain_id="ai_domain",
        tags=["db", "ops"],
        min_confidence=0.6,
    )

    assert [h.contribution.contribution_id for h in hits] == [target.contribution_id]


async def test_query_pages_cover_every_match_once(memory: SharedMemory) -> None:
    ids = set()
    for i in range(7):
        c, _ = await memory.contribute(new(initial_confidence=i / 10))
        ids.add(c.contribution_id)

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        hits, token = await memory.query("port", size=3, token=token)
        seen.extend(h.contribution.contribution_id for h in hits)
        pages += 1
        if not token:
            break

    assert pages == 3
    assert sorted(seen) == sorted(ids)


async def test_a_page_token_only_works_with_its_own_query(memory: SharedMemory) -> None:
    for _ in range(3):
        await memory.contribute(new())
    _, token = await memory.query("port", size=1)
    with pytest.raises(InvalidArgument) as raised:
        await memory.query("timeout", size=1, token=token)
    assert raised.value.field == "page_token"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"query": ""}, "query"),
        ({"query": "port", "min_confidence": 1.5}, "min_confidence"),
        ({"query": "port", "size": 1001}, "page_size"),
        ({"query": "port", "token": "garbage!"}, "page_token"),
        ({"query": "port", "tags": ["bad tag"]}, "tags[0]"),
    ],
)
async def test_bad_queries_name_the_field(
    memory: SharedMemory, kwargs: dict[str, Any], field: str
) -> None:
    rest = dict(kwargs)
    query = rest.pop("query")
    with pytest.raises(InvalidArgument) as raised:
        await memory.query(query, **rest)
    assert raised.value.field == field


async def test_list_by_domain_pages_newest_first_with_a_total(memory: SharedMemory) -> None:
    made = [(await memory.contribute(new()))[0].contribution_id for _ in range(5)]
    await memory.contribute(new("ai_domain"))
    await memory.contribute(new(contribution_type="insight"))

    first, token, total = await memory.list_by_domain("healing_domain", "optimization", 3)
    second, last_token, _ = await memory.list_by_domain("healing_domain", "optimization", 3, token)

    assert total == 5
    assert [c.contribution_id for c in first + second] == list(reversed(made))
    assert last_token == ""


async def test_stats_and_top_contributors_summarize_the_memory(memory: SharedMemory) -> None:
    a1, _ = await memory.contribute(new("ai_domain", initial_confidence=0.9))
    await memory.contribute(new("data_domain", contribution_type="insight", initial_confidence=0.2))
    await memory.contribute(new("data_domain", initial_confidence=0.4))
    await memory.verify(a1.contribution_id, "data_domain")
    await memory.apply(a1.contribution_id, "data_domain", Outcome.FAILURE)

    stats = await memory.stats()
    by_count = await memory.top_contributors(ContributorOrder.COUNT)
    by_mean = await memory.top_contributors(ContributorOrder.MEAN_CONFIDENCE, limit=1)

    assert stats.total == 3
    assert stats.by_type == {"optimization": 2, "insight": 1}
    assert stats.by_domain == {"ai_domain": 1, "data_domain": 2}
    assert (stats.verifications, stats.disputes, stats.successes, stats.failures) == (1, 0, 0, 1)
    assert [c.domain_id for c in by_count] == ["data_domain", "ai_domain"]
    assert by_count[0].contributions == 2
    assert by_count[0].mean_confidence == pytest.approx(0.3)
    assert [c.domain_id for c in by_mean] == ["ai_domain"]
    assert by_mean[0].verifications == 1


async def test_watch_streams_committed_changes_matching_the_type_pattern(
    memory: SharedMemory,
) -> None:
    received: list[tuple[ChangeKind, str]] = []

    async def consume() -> None:
        async for change in memory.watch("optim*"):
            received.append((change.kind, change.contribution.contribution_type))

    task = asyncio.create_task(consume())
    await eventually(lambda: memory.feed.watchers == 1, within_s=10.0)
    c, _ = await memory.contribute(new())
    await memory.contribute(new(contribution_type="insight"))
    await memory.verify(c.contribution_id, "ai_domain")
    await memory.apply(c.contribution_id, "ai_domain", Outcome.SUCCESS)
    await eventually(lambda: len(received) == 3, within_s=10.0)
    memory.close()
    await asyncio.wait_for(task, 5)

    assert received == [
        (ChangeKind.CONTRIBUTED, "optimization"),
        (ChangeKind.VERIFIED, "optimization"),
        (ChangeKind.APPLIED, "optimization"),
    ]


async def test_a_watcher_that_falls_too_far_behind_is_cut_off(memory: SharedMemory) -> None:
    stream = memory.watch()
    first = asyncio.ensure_future(anext(stream))
    await eventually(lambda: memory.feed.watchers == 1, within_s=10.0)
    for _ in range(8):  # the fixture's buffer is 5
        await memory.contribute(new())
    await first

    async def drain() -> None:
        for _ in range(10):
            await anext(stream)

    with pytest.raises(ResourceExhausted):
        await drain()


async def test_bulk_loaded_contributions_are_searchable_and_counted(memory: SharedMemory) -> None:
    loaded = []
    for i in range(12):
        c = Contribution(
            contribution_id=f"bulk-{i}",
            domain_id="import_domain",
            contribution_type="insight",
            content={"note": f"bulk item {i}", "parity": "even" if i % 2 == 0 else "odd"},
            tags=("imported",) if i % 3 == 0 else (),
            initial_confidence=0.5,
            confidence=0.5,
            evidence=Evidence(),
            created_at=1.0,
            updated_at=1.0,
        )
        loaded.append((c, document(c.contribution_type, c.tags, c.content)))
    await memory.store.bulk_insert(loaded, chunk=5)
    await memory.contribute(new())

    even, _ = await memory.query("even bulk")
    tagged, _ = await memory.query("bulk", tags=["imported"])

    assert len(even) == 6
    assert sorted(h.contribution.contribution_id for h in tagged) == [
        "bulk-0",
        "bulk-3",
        "bulk-6",
        "bulk-9",
    ]
    assert memory.store.corpus.documents == 13
    assert (await memory.stats()).by_domain["import_domain"] == 12
