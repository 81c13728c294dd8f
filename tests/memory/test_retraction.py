"""Retraction in the shared memory core, on SQLite and PostgreSQL: the author withdraws its
contribution and it leaves every search, list and statistic."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from services.memory.memory import SharedMemory
from services.memory.model import ChangeKind, ContributorOrder, Outcome
from tests.memory.test_memory import new, outbox_types
from tests.support import ManualClock, eventually


async def test_a_retracted_contribution_leaves_search_but_its_neighbours_stay(
    memory: SharedMemory,
) -> None:
    gone, _ = await memory.contribute(new())
    kept, _ = await memory.contribute(new(content={"issue": "port_timeout", "fix": "retry"}))

    retracted, changed = await memory.retract(gone.contribution_id, "healing_domain", "wrong")

    assert changed
    assert retracted.retraction is not None
    assert retracted.retraction.reason == "wrong"
    for query in ("port timeout", "restart component", "optimization"):
        hits, _ = await memory.query(query)
        assert gone.contribution_id not in [h.contribution.contribution_id for h in hits]
    hits, _ = await memory.query("port timeout")
    assert [h.contribution.contribution_id for h in hits] == [kept.contribution_id]
    # Words only the retracted contribution had match nothing any more.
    assert (await memory.query("restart"))[0] == []


async def test_search_ranks_as_if_the_retracted_contribution_had_never_been_stored(
    memory: SharedMemory,
) -> None:
    kept, _ = await memory.contribute(new(content={"issue": "disk full", "fix": "rotate logs"}))
    baseline, _ = await memory.query("disk")
    other, _ = await memory.contribute(new(content={"issue": "disk slow", "fix": "defragment"}))
    await memory.retract(other.contribution_id, "healing_domain", "duplicate")

    [hit], _ = await memory.query("disk")

    assert hit.contribution.contribution_id == kept.contribution_id
    assert hit.relevance == pytest.approx(baseline[0].relevance)
    assert memory.store.corpus.documents == 1


async def test_a_retracted_contribution_leaves_lists_contributors_and_stats(
    memory: SharedMemory,
) -> None:
    a, _ = await memory.contribute(new("ai_domain", initial_confidence=0.9))
    await memory.contribute(new("ai_domain", contribution_type="insight", initial_confidence=0.3))
    lone, _ = await memory.contribute(new("data_domain", initial_confidence=0.4))
    await memory.verify(a.contribution_id, "data_domain")
    await memory.apply(a.contribution_id, "data_domain", Outcome.FAILURE)

    await memory.retract(a.contribution_id, "ai_domain", "rolled back")
    await memory.retract(lone.contribution_id, "data_domain", "rolled back")

    listed, _, total = await memory.list_by_domain("ai_domain")
    assert [c.contribution_type for c in listed] == ["insight"]
    assert total == 1
    assert (await memory.list_by_domain("data_domain"))[::2] == ([], 0)
    assert (await memory.list_by_domain("ai_domain", "optimization"))[::2] == ([], 0)
    contributors = await memory.top_contributors(ContributorOrder.MEAN_CONFIDENCE)
    assert [(c.domain_id, c.contributions) for c in contributors] == [("ai_domain", 1)]
    assert contributors[0].mean_confidence == pytest.approx(0.3)
    assert contributors[0].verifications == 0
    stats = await memory.stats()
    assert stats.total == 1
    assert stats.by_type == {"insight": 1}
    assert stats.by_domain == {"ai_domain": 1}
    assert (stats.verifications, stats.disputes, stats.successes, stats.failures) == (0, 0, 0, 0)
    assert stats.mean_confidence == pytest.approx(0.3)
    assert stats.retracted == 2


async def test_get_still_returns_a_retracted_contribution_flagged_with_its_evidence(
    memory: SharedMemory, clock: ManualClock
) -> None:
    c, _ = await memory.contribute(new())
    await memory.verify(c.contribution_id, "ai_domain")
    clock.advance(5)

    await memory.retract(c.contribution_id, "healing_domain", "superseded", "req-1")
    got, verdicts, _ = await memory.get(c.contribution_id)

    assert got.retraction is not None
    assert (got.retraction.reason, got.retraction.request_id) == ("superseded", "req-1")
    assert got.retraction.time == clock.now
    assert got.evidence.verifications == 1
    assert [v.domain_id for v in verdicts] == ["ai_domain"]


async def test_only_the_author_may_retract(memory: SharedMemory) -> None:
    c, _ = await memory.contribute(new())

    with pytest.raises(PermissionDenied) as denied:
        await memory.retract(c.contribution_id, "ai_domain", "I disagree")

    assert denied.value.reason == "NOT_AUTHOR"
    assert (await memory.get(c.contribution_id))[0].retraction is None
    assert (await memory.query("port timeout"))[0]
    assert await outbox_types(memory) == ["memory.contributed"]


async def test_retracting_again_changes_nothing_and_keeps_the_first_reason(
    memory: SharedMemory,
) -> None:
    c, _ = await memory.contribute(new())
    await memory.retract(c.contribution_id, "healing_domain", "first", "req-1")

    again, changed = await memory.retract(c.contribution_id, "healing_domain", "first", "req-1")
    other, changed_other = await memory.retract(c.contribution_id, "healing_domain", "second")

    assert not changed
    assert not changed_other
    assert again.retraction is not None
    assert again.retraction.reason == "first"
    assert other.retraction == again.retraction
    assert await outbox_types(memory) == ["memory.contributed", "memory.retracted"]
    assert (await memory.stats()).retracted == 1


async def test_a_retracted_contribution_takes_no_more_evidence(memory: SharedMemory) -> None:
    c, _ = await memory.contribute(new())
    _, earlier, _ = await memory.apply(c.contribution_id, "ai_domain", Outcome.SUCCESS, "", "r1")
    await memory.retract(c.contribution_id, "healing_domain", "wrong")

    refusals = [
        memory.verify(c.contribution_id, "ai_domain"),
        memory.dispute(c.contribution_id, "ai_domain", "bad"),
        memory.apply(c.contribution_id, "ai_domain", Outcome.FAILURE),
        memory.apply(c.contribution_id, "healing_domain", Outcome.SUCCESS, "", "r2"),
    ]
    for call in refusals:
        with pytest.raises(FailedPrecondition) as refused:
            await call
        assert refused.value.reason == "RETRACTED"
    # A retry of an application recorded before the retraction still gets its answer.
    _, replayed, created = await memory.apply(
        c.contribution_id, "ai_domain", Outcome.SUCCESS, "", "r1"
    )
    assert (replayed, created) == (earlier, False)
    got, _, applications = await memory.get(c.contribution_id)
    assert (got.evidence.successes, got.evidence.failures, len(applications)) == (1, 0, 1)


async def test_retraction_is_announced_through_the_outbox_and_the_watch(
    memory: SharedMemory,
) -> None:
    received: list[ChangeKind] = []

    async def consume() -> None:
        async for change in memory.watch("optim*"):
            received.append(change.kind)

    task = asyncio.create_task(consume())
    await eventually(lambda: memory.feed.watchers == 1, within_s=10.0)
    c, _ = await memory.contribute(new(tags=("ops",)))
    await memory.retract(c.contribution_id, "healing_domain", "rolled back: ex_1", "comp-1")
    await eventually(lambda: len(received) == 2, within_s=10.0)
    memory.close()
    await asyncio.wait_for(task, 5)

    assert received == [ChangeKind.CONTRIBUTED, ChangeKind.RETRACTED]
    event = (await memory.outbox.pending(10))[1]
    assert event.event_type == "memory.retracted"
    assert event.subject == c.contribution_id
    assert event.data["author_domain"] == event.data["actor_domain"] == "healing_domain"
    assert event.data["reason"] == "rolled back: ex_1"
    assert event.data["request_id"] == "comp-1"
    assert event.data["tags"] == ["ops"]


async def test_bad_retractions_name_the_field_and_unknown_ids_are_not_found(
    memory: SharedMemory,
) -> None:
    c, _ = await memory.contribute(new())
    for args, field in [
        (("", "healing_domain", "r"), "contribution_id"),
        ((c.contribution_id, "", "r"), "domain_id"),
        ((c.contribution_id, "healing_domain", ""), "reason"),
        ((c.contribution_id, "healing_domain", "r" * 1025), "reason"),
        ((c.contribution_id, "healing_domain", "r", "x" * 129), "request_id"),
    ]:
        with pytest.raises(InvalidArgument) as raised:
            await memory.retract(*args)
        assert raised.value.field == field
    with pytest.raises(NotFound):
        await memory.retract("00000000-0000-0000-0000-000000000000", "healing_domain", "r")
    assert (await memory.get(c.contribution_id))[0].retraction is None


async def test_a_contribute_retry_after_retraction_returns_the_retracted_contribution(
    memory: SharedMemory,
) -> None:
    c, _ = await memory.contribute(new(request_id="store-1"))
    await memory.retract(c.contribution_id, "healing_domain", "rolled back")

    again, created = await memory.contribute(new(request_id="store-1"))

    assert not created
    assert again.contribution_id == c.contribution_id
    assert again.retraction is not None
    assert (await memory.query("port timeout"))[0] == []


async def test_the_index_stays_consistent_after_retractions(memory: SharedMemory) -> None:
    made = [
        (await memory.contribute(new(content={"note": f"item {i}", "kind": "shared"})))[0]
        for i in range(6)
    ]
    for c in made[::2]:
        await memory.retract(c.contribution_id, "healing_domain", "pruned")

    hits, _ = await memory.query("shared item")

    assert sorted(h.contribution.contribution_id for h in hits) == sorted(
        c.contribution_id for c in made[1::2]
    )
    async with memory.store.db.transaction() as conn:
        if memory.store.db.is_sqlite:
            # Raises if the contentless FTS5 index was corrupted by a mismatched delete.
            await conn.execute(
                text("INSERT INTO memory_search (memory_search) VALUES ('integrity-check')")
            )
        else:
            nulls = await conn.execute(
                text("SELECT count(*) FROM memory_contributions WHERE search IS NULL")
            )
            assert nulls.scalar_one() == 3


async def test_a_restarted_store_counts_only_live_contributions_for_ranking(
    memory: SharedMemory,
) -> None:
    a, _ = await memory.contribute(new())
    await memory.contribute(new(content={"issue": "memory leak"}))
    await memory.retract(a.contribution_id, "healing_domain", "wrong")
    live = memory.store.corpus

    await memory.store.open()

    assert memory.store.corpus == live
    assert live.documents == 1
