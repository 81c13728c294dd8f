"""The bus core without gRPC, on SQLite and PostgreSQL: publishing, reading, retention."""

from __future__ import annotations

import asyncio
import time

import pytest
from google.protobuf import struct_pb2

from grace.eventbus.v1 import event_pb2
from services.common.errors import InvalidArgument, NotFound
from services.eventbus import eventlog
from services.eventbus.bus import EventBus
from services.eventbus.envelope import validate_patterns
from services.eventbus.eventlog import EventLog
from services.eventbus.model import DeadLetterRecord, Start, StartSpec, SubscriptionState
from services.eventbus.store import LogFilter
from tests.support import ManualClock, eventually, give_up_at, pause_after


def ev(
    event_type: str = "ml.prediction", source: str = "ai_domain", **fields: object
) -> event_pb2.Event:
    event = event_pb2.Event(event_type=event_type, source_domain=source, **fields)  # type: ignore[arg-type]
    return event


async def take(
    bus: EventBus, patterns: tuple[str, ...], start: StartSpec, count: int, **kw: object
) -> list[event_pb2.Event]:
    got: list[event_pb2.Event] = []
    stream = bus.subscribe(patterns, start, **kw)  # type: ignore[arg-type]
    async for batch in stream:
        # What the stream sends is the events' bytes: the same events.
        assert [event_pb2.Event.FromString(e) for e in batch.encoded] == batch.events
        got.extend(batch.events)
        if len(got) >= count:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    return got


async def test_sequences_strictly_increase_across_concurrent_publishes(bus: EventBus) -> None:
    results = await asyncio.gather(*(bus.publish(ev(data=None)) for _ in range(50)))
    sequences = sorted(r.sequence for r in results)
    assert sequences == list(range(1, 51))
    batch = await bus.publish_batch([ev() for _ in range(10)])
    assert [o.appended.sequence for o in batch if o.appended] == list(range(51, 61))


async def test_a_repeated_id_from_the_same_source_is_stored_once(bus: EventBus) -> None:
    first = await bus.publish(ev(id="evt-1"))
    again = await bus.publish(ev(id="evt-1"))
    other_source = await bus.publish(ev(id="evt-1", source="data_domain"))
    in_one_batch = await bus.publish_batch([ev(id="evt-2"), ev(id="evt-2"), ev(id="evt-1")])

    assert (again.sequence, again.duplicate) == (first.sequence, True)
    assert not other_source.duplicate
    assert other_source.sequence == first.sequence + 1
    seqs = [(o.appended.sequence, o.appended.duplicate) for o in in_one_batch if o.appended]
    assert seqs == [(3, False), (3, True), (1, True)]
    assert bus.log.head == 3
    assert (await bus.stats()).duplicates_total == 3


async def test_a_repeat_across_the_publishes_of_one_commit_is_stored_once(
    bus: EventBus,
) -> None:
    if not isinstance(bus.log, EventLog):
        pytest.skip("the built-in log's group commit; JetStream drops repeats itself")
    reader = bus.subscribe(("*",), StartSpec(Start.NEW))
    first_batch = asyncio.ensure_future(reader.__anext__())
    await asyncio.sleep(0)  # the stream is live before the publishes
    commits = bus.log._committer.batches
    first, second = await asyncio.gather(
        bus.publish_batch([ev(id="a"), ev(id="b")]),
        bus.publish_batch([ev(id="b"), ev(id="c")]),
    )
    assert bus.log._committer.batches == commits + 1  # both in one commit
    assert [(o.appended.sequence, o.appended.duplicate) for o in first + second if o.appended] == [
        (1, False),
        (2, False),
        (2, True),
        (3, False),
    ]
    # Live readers get each stored event once, in order.
    batch = await first_batch
    assert [(e.id, e.sequence) for e in batch.events] == [("a", 1), ("b", 2), ("c", 3)]
    await reader.aclose()  # type: ignore[attr-defined]


async def test_a_batch_keeps_the_times_it_has_and_stamps_the_others(bus: EventBus) -> None:
    stamped = ev(id="stamped")
    stamped.time.FromSeconds(1_700_000_000)
    before = time.time_ns()
    outcomes = await bus.publish_batch([stamped, ev(id="unstamped")])
    after = time.time_ns()
    assert all(o.appended for o in outcomes)
    events = await take(bus, ("*",), StartSpec(Start.ALL), 2)
    assert events[0].time.ToNanoseconds() == 1_700_000_000 * 10**9
    assert before <= events[1].time.ToNanoseconds() <= after
    # What is stored (and streamed) is each event's plain serialization.
    assert bus.log.encode(events) == [e.SerializeToString() for e in events]


async def test_invalid_entries_are_rejected_alone_and_name_the_field(bus: EventBus) -> None:
    big = struct_pb2.Struct()
    big.update({"blob": "x" * (1024 * 1024 + 10)})
    outcomes = await bus.publish_batch(
        [ev(), ev(event_type="bad type"), ev(source=""), ev(data=big), ev(id="no spaces allowed")]
    )
    assert outcomes[0].appended is not None
    assert [o.error.split(":")[0] for o in outcomes[1:]] == [
        "events[1].event_type",
        "events[2].source_domain",
        "events[3].data",
        "events[4].id",
    ]
    with pytest.raises(InvalidArgument) as raised:
        await bus.publish(ev(event_type=""))
    assert raised.value.field == "event_type"
    with pytest.raises(InvalidArgument) as raised:
        await bus.publish_batch([ev() for _ in range(1001)])
    assert raised.value.field == "events"


def test_patterns_combine_single_and_many_and_are_validated() -> None:
    assert validate_patterns("ml.*", ["a.b", "ml.*"], required=True) == ("ml.*", "a.b")
    assert validate_patterns("", [], required=False) == ("*",)
    assert validate_patterns("x", ["*"], required=True) == ("*",)
    with pytest.raises(InvalidArgument) as raised:
        validate_patterns("", ["ok", "not ok"], required=True)
    assert raised.value.field == "patterns[1]"
    with pytest.raises(InvalidArgument):
        validate_patterns("", [], required=True)


async def test_subscribe_starts_at_all_sequence_time_or_new(
    bus: EventBus, clock: ManualClock
) -> None:
    await bus.publish_batch([ev("ml.a"), ev("ops.b"), ev("ml.c")])
    clock.advance(60)
    await bus.publish_batch([ev("ml.d"), ev("ml.e")])

    all_ml = await take(bus, ("ml.*",), StartSpec(Start.ALL), 4)
    assert [e.event_type for e in all_ml] == ["ml.a", "ml.c", "ml.d", "ml.e"]
    from_seq = await take(bus, ("*",), StartSpec(Start.SEQUENCE, sequence=3), 3)
    assert [e.sequence for e in from_seq] == [3, 4, 5]
    from_time = await take(bus, ("*",), StartSpec(Start.TIME, time=clock.now - 1), 2)
    assert [e.event_type for e in from_time] == ["ml.d", "ml.e"]

    async def publish_later() -> None:
        await asyncio.sleep(0.1)
        await bus.publish(ev("ml.new"))

    task = asyncio.create_task(publish_later())
    new_only = await take(bus, ("ml.*",), StartSpec(Start.NEW), 1)
    await task
    assert [e.event_type for e in new_only] == ["ml.new"]


async def test_a_durable_consumer_resumes_after_its_last_ack(bus: EventBus) -> None:
    await bus.publish_batch([ev(f"ml.e{i}") for i in range(5)])
    first = await take(bus, ("ml.*",), StartSpec(Start.ALL), 3, consumer="memory")
    assert await bus.ack("memory", first[1].sequence) == 2
    assert await bus.ack("memory", 1) == 2  # cumulative: never moves back
    resumed = await take(bus, ("ml.*",), StartSpec(), 3, consumer="memory")
    assert [e.sequence for e in resumed] == [3, 4, 5]
    with pytest.raises(NotFound):
        await bus.ack("nobody", 1)
    with pytest.raises(InvalidArgument) as raised:
        await bus.ack("memory", 99)
    assert raised.value.field == "sequence"


async def test_retention_by_count_and_age_trims_history(bus: EventBus, clock: ManualClock) -> None:
    object.__setattr__(bus.settings, "retention_max_count", 5)
    object.__setattr__(bus.settings, "retention_max_age_s", 100)
    await bus.publish_batch([ev(f"t.{i}") for i in range(8)])
    assert await bus.log.enforce_retention() == 3
    events, _ = await bus.history(size=100)
    assert [e.sequence for e in events] == [4, 5, 6, 7, 8]
    clock.advance(150)
    await bus.publish(ev("t.late"))
    await bus.log.enforce_retention()
    events, _ = await bus.history(size=100)
    assert [e.event_type for e in events] == ["t.late"]
    stats = await bus.stats()
    assert (stats.first_sequence, stats.head_sequence, stats.retained_events) == (9, 9, 1)


async def test_history_filters_by_pattern_source_and_time_and_pages(
    bus: EventBus, clock: ManualClock
) -> None:
    start = clock.now
    for i in range(30):
        await bus.publish_batch([ev(f"ml.x{i}", "ai_domain"), ev("ops.y", "ops"), ev("ML.caps")])
        clock.advance(1)
    seen: list[int] = []
    token = ""
    while True:
        page, token = await bus.history(pattern="ml.*", size=7, token=token)
        seen.extend(e.sequence for e in page)
        if not token:
            break
    assert seen == [1 + 3 * i for i in range(30)]
    newest, _ = await bus.history(source_domain="ops", size=2, newest_first=True)
    assert [e.sequence for e in newest] == [89, 86]
    window, _ = await bus.history(
        pattern="ml.*", start_time=start + 10, end_time=start + 12, size=50
    )
    assert [e.event_type for e in window] == ["ml.x10", "ml.x11"]
    with pytest.raises(InvalidArgument):
        await bus.history(token="garbage!")


async def test_type_counts_survive_in_the_store(bus: EventBus) -> None:
    await bus.publish_batch([ev("a.b"), ev("a.b"), ev("c")])
    assert (await bus.stats()).events_by_type == {"a.b": 2, "c": 1}


async def test_the_log_encodes_recent_events_from_their_stored_bytes_and_older_ones_anew(
    bus: EventBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not isinstance(bus.log, EventLog):
        pytest.skip("the built-in log keeps its commits' bytes; JetStream serializes")
    bus.log._recent_limit = 3
    data = struct_pb2.Struct()
    data.update({"k": "v", "n": 1.5})
    await bus.publish_batch([ev(id=f"e{i}", data=data) for i in range(5)])
    events = await take(bus, ("*",), StartSpec(Start.ALL), 5)
    assert sorted(bus.log._recent) == [3, 4, 5]
    encoded = bus.log.encode(events)
    assert [event_pb2.Event.FromString(e) for e in encoded] == events
    stored = await bus.log.scan(0, 5, 10, LogFilter((), ""))
    assert encoded[2:] == [row.payload for row in stored][2:]
    # Bounded by bytes as well: large events leave fewer kept.
    monkeypatch.setattr(eventlog, "RECENT_BYTES", len(stored[-1].payload) * 5 // 2)
    await bus.publish_batch([ev(id=f"f{i}", data=data) for i in range(3)])
    assert sorted(bus.log._recent) == [7, 8]


async def test_a_subscription_whose_creator_gives_up_midway_is_created_whole(
    bus: EventBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A client's deadline cancels the RPC's handler, here just after the row is stored:
    # the worker must still start, and the client's retry must find the subscription.
    stored = pause_after(monkeypatch, bus.store, "insert_subscription")
    await give_up_at(
        bus.create_subscription("memory_domain", ("ml.*",), subscription_id="mem"), stored
    )
    retry = asyncio.create_task(
        bus.create_subscription("memory_domain", ("ml.*",), subscription_id="mem")
    )
    stored.release.set()
    sub, created = await retry
    assert (sub.subscription_id, created) == ("mem", False)
    assert bus.get_subscription("mem").patterns == ("ml.*",)


async def test_concurrent_creations_of_one_subscription_create_it_once(bus: EventBus) -> None:
    results = await asyncio.gather(
        *(
            bus.create_subscription("memory_domain", ("ml.*",), subscription_id="mem")
            for _ in range(3)
        )
    )
    assert sorted(created for _, created in results) == [False, False, True]
    deleted = await asyncio.gather(
        bus.delete_subscription("mem"), bus.delete_subscription("mem"), return_exceptions=True
    )
    assert sum(isinstance(d, NotFound) for d in deleted) == 1
    with pytest.raises(NotFound):
        bus.get_subscription("mem")


async def a_dead_letter(bus: EventBus) -> None:
    """Dead letter "d1" of subscription "mem", which gives up after one attempt (no
    registry answers here, so every attempt fails)."""
    await bus.create_subscription("memory_domain", ("ml.*",), subscription_id="mem", max_attempts=1)
    await bus.store.add_dead_letter(
        DeadLetterRecord("d1", "mem", "memory_domain", 1, ev().SerializeToString(), 1, "drop", 1.0)
    )


async def test_a_dead_letter_whose_redeliverer_gives_up_midway_is_still_delivered_again(
    bus: EventBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cancelled just after the record is marked for redelivery: the delivery must still
    # start, since a retry finds the record marked and leaves it be.
    await a_dead_letter(bus)
    marked = pause_after(
        monkeypatch, bus.push.store, "add_dead_letter", lambda record: record.redelivering
    )
    await give_up_at(bus.redeliver_dead_letter("d1"), marked)
    assert (await bus.redeliver_dead_letter("d1")).redelivering  # the retry leaves it be
    marked.release.set()

    async def tried_again() -> bool:
        # No registry answers here: the one attempt fails and the record says so.
        record = await bus.store.dead_letter("d1")
        return record is not None and (record.redelivering, record.attempts) == (False, 2)

    await eventually(tried_again, within_s=10)


async def test_concurrent_redeliveries_of_one_dead_letter_deliver_it_once(
    bus: EventBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    await a_dead_letter(bus)
    deliveries: list[int] = []
    attempts = bus.push._attempts

    async def counted(sub: SubscriptionState, event: event_pb2.Event) -> tuple[bool, int, str]:
        deliveries.append(event.sequence)
        return await attempts(sub, event)

    monkeypatch.setattr(bus.push, "_attempts", counted)
    # Three RedeliverDeadLetter calls that each read the record before any of them marked it.
    unmarked = await bus.store.dead_letter("d1")
    assert unmarked is not None
    records = await asyncio.gather(*(bus.push.redeliver(unmarked) for _ in range(3)))
    assert all(record.redelivering for record in records)
    assert (await bus.redeliver_dead_letter("d1")).redelivering

    async def tried_again() -> bool:
        record = await bus.store.dead_letter("d1")
        return record is not None and not record.redelivering

    await eventually(tried_again, within_s=10)
    assert len(deliveries) == 1
    record = await bus.store.dead_letter("d1")
    assert record is not None
    assert record.attempts == 2  # its first try and one redelivery
