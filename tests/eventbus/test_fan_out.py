"""Fan-out hands each live reader exactly the events it wants, in order, in one call."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from grace.eventbus.v1 import event_pb2
from services.common.patterns import matches
from services.eventbus.eventlog import Reader, fan_out
from services.eventbus.index import PatternIndex
from services.eventbus.store import LogFilter


class _Log:
    """The little of a log a reader touches while live."""

    def __init__(self) -> None:
        self.index: PatternIndex[Reader] = PatternIndex()
        self.readers: set[Reader] = set()
        self.head = 0


TYPES = ["ml.a", "ml.b", "ops.c"]
SOURCES = ["s1", "s2"]


@settings(max_examples=60, deadline=None)
@given(
    kinds=st.lists(st.tuples(st.sampled_from(TYPES), st.sampled_from(SOURCES)), max_size=40),
    cursor=st.integers(0, 20),
    source=st.sampled_from(["", *SOURCES]),
    pattern=st.sampled_from(["*", "ml.*", "ops.c"]),
    limit=st.integers(1, 50),
    byte_limit=st.integers(1, 2000),
)
def test_a_reader_gets_what_one_offer_per_event_would_give_it(
    kinds: list[tuple[str, str]],
    cursor: int,
    source: str,
    pattern: str,
    limit: int,
    byte_limit: int,
) -> None:
    events = [
        event_pb2.Event(sequence=n, event_type=t, source_domain=s)
        for n, (t, s) in enumerate(kinds, 1)
    ]
    log = _Log()
    spec = LogFilter((pattern,), source)
    batched = Reader(log, spec, cursor, limit, byte_limit)  # type: ignore[arg-type]  # a stand-in
    one_by_one = Reader(log, spec, cursor, limit, byte_limit)  # type: ignore[arg-type]  # log
    batched.live = one_by_one.live = True
    with batched:
        fan_out(log.index, events, [event.ByteSize() for event in events])
        for event in events:
            if matches(pattern, event.event_type):
                one_by_one.offer(event)
        assert (batched.live, batched.overflows) == (one_by_one.live, one_by_one.overflows)
        assert batched._queue == one_by_one._queue
        assert batched.queued_bytes == one_by_one.queued_bytes


async def test_a_reader_counts_the_bytes_it_holds_and_overflows_past_its_byte_bound() -> None:
    log = _Log()
    events = [event_pb2.Event(sequence=n, event_type="ml.a") for n in range(1, 7)]
    with Reader(log, LogFilter(("ml.*",)), 0, 100, 1000) as reader:  # type: ignore[arg-type]
        reader.live = True
        fan_out(log.index, events[:4], [100, 200, 300, 400])
        assert (reader.queued, reader.queued_bytes) == (4, 1000)
        assert [e.sequence for e in await reader.next_batch(3)] == [1, 2, 3]
        assert (reader.queued, reader.queued_bytes) == (1, 400)
        # 400 + 700 > 1000: the queue goes, and the reader will read the log instead.
        fan_out(log.index, events[4:], [300, 400])
        assert (reader.live, reader.overflows, reader.queued, reader.queued_bytes) == (
            False,
            1,
            0,
            0,
        )
