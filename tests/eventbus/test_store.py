"""The bus's store on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.common.storage import Database
from services.eventbus.model import ConsumerState, DeadLetterRecord, SubscriptionState
from services.eventbus.store import DuplicateEvent, EventRow, EventStore, LogFilter
from tests.conftest import DatabaseTarget


@pytest.fixture
async def store(database: DatabaseTarget) -> AsyncIterator[EventStore]:
    s = EventStore(Database(database.url, schema=database.schema))
    await s.open()
    yield s
    await s.close()


def row(sequence: int, event_type: str = "ml.x", source: str = "ai", at: float = 1.0) -> EventRow:
    return EventRow(sequence, source, f"id-{sequence}", event_type, at, b"payload")


async def test_a_group_with_a_stored_id_writes_nothing(store: EventStore) -> None:
    await store.append([row(1), row(2)], {"ml.x": 2})
    with pytest.raises(DuplicateEvent):
        await store.append([row(3), EventRow(4, "ai", "id-1", "ml.x", 1.0, b"")], {"ml.x": 2})
    assert await store.bounds() == (1, 2)
    assert await store.type_counts() == {"ml.x": 2}
    assert await store.existing([("ai", "id-1"), ("ai", "id-9"), ("other", "id-2")]) == {
        ("ai", "id-1"): 1
    }


async def test_reads_prefilter_by_pattern_and_source_and_truncate_cuts_the_front(
    store: EventStore,
) -> None:
    await store.append(
        [row(1, "ml.a"), row(2, "ops.b"), row(3, "ml_x"), row(4, "ml.c", "data")], {}
    )
    found = await store.read(0, 4, 10, LogFilter(("ml.*",)))
    assert [r.sequence for r in found] == [1, 4]  # '_' and '%' are literal in patterns
    found = await store.read(0, 4, 10, LogFilter(("ml.*",), "data"))
    assert [r.sequence for r in found] == [4]
    assert await store.truncate_before(3) == 2
    assert await store.bounds() == (3, 4)
    assert await store.published_at(1) is None


async def test_subscriptions_consumers_and_dead_letters_round_trip(store: EventStore) -> None:
    sub = SubscriptionState("s1", "memory_domain", ("ml.*", "ops.*"), 5.0, 3, 0)
    await store.insert_subscription(sub)
    sub.delivered_sequence, sub.delivered_count, sub.last_error = 7, 4, "UNAVAILABLE"
    await store.flush([sub], delivered_total=4)
    assert await store.subscriptions() == [sub]
    assert (await store.counters())["delivered_total"] == 4

    await store.save_consumer(ConsumerState("memory", ("ml.*",), "", 3, 1.0))
    await store.save_consumer(ConsumerState("memory", ("ml.*",), "", 5, 2.0))
    assert [(c.name, c.acked_sequence) for c in await store.consumers()] == [("memory", 5)]

    for n in range(5):
        await store.add_dead_letter(
            DeadLetterRecord(f"d{n}", "s1", "memory_domain", n, b"e", 3, "RETRY", float(n))
        )
    first = await store.dead_letters(limit=2)
    assert [d.dead_letter_id for d in first] == ["d4", "d3"]
    rest = await store.dead_letters(before=(first[-1].failed_at, first[-1].dead_letter_id))
    assert [d.dead_letter_id for d in rest] == ["d2", "d1", "d0"]
    await store.remove_dead_letter("d4")
    assert await store.count_dead_letters() == 4
    await store.delete_subscription("s1")
    assert await store.subscriptions() == []
