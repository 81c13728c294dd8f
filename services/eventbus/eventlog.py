"""The event log: group-committed appends, duplicate suppression, retention, and fan-out.

Publishers hand validated events to `append` and wait. The log's group committer takes
everything that is waiting, and `_commit` drops duplicates, assigns the next sequences and
writes the whole group in one transaction; the events are offered to live readers and the
publishers answered only after it. While a transaction is in flight the next group forms,
so under load many publishes share one commit instead of paying one fsync each.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain, count, repeat
from operator import attrgetter, itemgetter
from typing import NamedTuple, Protocol

from grace.eventbus.v1 import event_pb2
from services.common.errors import Unavailable
from services.common.group_commit import GroupCommitter
from services.common.patterns import matches
from services.eventbus import tracing
from services.eventbus.index import PatternIndex
from services.eventbus.model import DEFAULT_READER_QUEUE_BYTES, BusSettings, Start, StartSpec
from services.eventbus.store import DuplicateEvent, EventRow, EventStore, LogFilter, RowValues

log = logging.getLogger(__name__)

Clock = Callable[[], float]

# Most bytes of stored events kept for streaming them (see `EventLog.encode`).
RECENT_BYTES = 16 * 1024 * 1024


class Appended(NamedTuple):
    """The outcome of appending one event (a tuple: one is built per event on the hot path)."""

    event_id: str
    sequence: int
    duplicate: bool
    published_at: float


# Field getters for the log's passes over a group's events or rows: callables that `map`
# runs without a Python frame per event.
_EVENT_ID = attrgetter("id")
_EVENT_TYPE = attrgetter("event_type")
_SOURCE_DOMAIN = attrgetter("source_domain")
_SERIALIZE = event_pb2.Event.SerializeToString
_SEQUENCE = attrgetter("sequence")
_ROW_SEQUENCE = itemgetter(0)  # a row's fields, as `EventRow` names them
_ROW_PAYLOAD = itemgetter(5)


class Log(Protocol):
    """What the bus needs from a durable, ordered event log; two implementations exist:
    `EventLog` (the bus's own SQL tables) and `JetStreamLog` (a NATS JetStream stream).

    `head` and `first` are the newest and oldest retained sequences as this process knows
    them; `index` and `readers` are the live readers that the log's fan-out feeds: every
    appended event, whichever process appended it, is offered to them in sequence order.
    """

    head: int
    first: int
    duplicates: int
    index: PatternIndex[Reader]
    readers: set[Reader]

    async def open(self) -> None:
        """Connects, loads the bounds and starts the live fan-out."""

    async def close(self, drain_timeout_s: float = 5.0) -> None:
        """Stops appending and ends every reader."""

    def new_id(self) -> str:
        """An id for an event whose publisher gave none."""

    async def sync(self) -> None:
        """Brings `head` and `first` up to date with what other processes appended."""

    def encode(self, events: Sequence[event_pb2.Event]) -> list[bytes]:
        """Each event serialized (sequence included), as a stream sends it."""

    async def append(
        self, batch: Sequence[event_pb2.Event], generated: Sequence[bool]
    ) -> list[Appended]:
        """Appends validated events in order; returns once they are durable."""

    async def read(
        self, after: int, limit: int, log_filter: LogFilter
    ) -> tuple[list[event_pb2.Event], int]:
        """Up to `limit` matching events after `after`, and the last sequence examined."""

    async def scan(
        self,
        after: int,
        upto: int,
        limit: int,
        log_filter: LogFilter,
        *,
        newest_first: bool = False,
        start_time: float = 0.0,
        end_time: float = 0.0,
    ) -> list[EventRow]:
        """Up to `limit` stored events with after < sequence <= upto, pre-filtered (callers
        re-check patterns with the exact matcher)."""

    async def resolve_start(self, spec: StartSpec) -> int:
        """The cursor (last sequence already seen) for a start position."""

    async def enforce_retention(self) -> int:
        """Deletes events past the age and count limits; returns how many went."""

    async def type_counts(self) -> dict[str, int]:
        """Events per type."""


@dataclass
class _Plan:
    """What one group commit writes and answers."""

    head: int
    rows: list[RowValues] = field(default_factory=list)
    by_type: dict[str, int] = field(default_factory=dict)
    fresh: list[event_pb2.Event] = field(default_factory=list)
    answers: list[list[Appended]] = field(default_factory=list)
    duplicates: int = 0


@dataclass(frozen=True)
class _Pending:
    events: Sequence[event_pb2.Event]
    generated: Sequence[bool]


class EventLog:
    """The durable, ordered log of events and its live readers.

    Args:
        store: Durable storage.
        settings: Retention and batching tunables.
        clock: Epoch seconds; injectable for tests.
    """

    def __init__(self, store: EventStore, settings: BusSettings, clock: Clock = time.time) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.head = 0
        self.first = 1
        self.duplicates = 0
        self.index: PatternIndex[Reader] = PatternIndex()
        self._committer: GroupCommitter[_Pending, list[Appended]] = GroupCommitter(
            self._commit,
            name="eventbus-committer",
            max_batch_weight=settings.max_group_events,
            weight=lambda pending: len(pending.events),
            closed_error=lambda: Unavailable("event bus is shutting down"),
            failed_error=lambda exc: Unavailable(f"event log write failed: {exc}"),
        )
        self._last_published_at = 0.0
        self._id_prefix = os.urandom(8).hex()
        self._ids = count(1)
        self.readers: set[Reader] = set()
        # The stored bytes of the newest events, by sequence: live readers stream the
        # events they were handed at commit, and sending these bytes saves serializing
        # each event again per stream (see `encode`). Bounded to what one live reader can
        # hold queued and at most RECENT_BYTES; an older event is serialized anew.
        self._recent: dict[int, bytes] = {}
        self._recent_first = 1  # the oldest sequence that may be kept
        self._recent_bytes = 0
        self._recent_limit = settings.reader_queue_limit

    async def open(self) -> None:
        """Loads the log's bounds and starts the committer (the store is open already)."""
        first, head = await self.store.bounds()
        self.head = head
        self.first = first or head + 1
        self._recent_first = head + 1
        if head:
            self._last_published_at = await self.store.published_at(head) or 0.0
        self._committer.start()
        log.info("event log open: sequences %d..%d", self.first, self.head)

    async def close(self, drain_timeout_s: float = 5.0) -> None:
        """Stops accepting appends, commits what is queued (for at most `drain_timeout_s`),
        and ends every reader."""
        await self._committer.close(drain_timeout_s)
        for reader in list(self.readers):
            reader.close()

    def new_id(self) -> str:
        """An id for an event whose publisher gave none: a random per-process prefix and a
        counter, far cheaper than a UUID per event on the hot path."""
        return f"{self._id_prefix}-{next(self._ids)}"

    async def sync(self) -> None:
        """Nothing to do: this process is the log's only writer."""

    # -- appending -------------------------------------------------------------------

    async def append(
        self, batch: Sequence[event_pb2.Event], generated: Sequence[bool]
    ) -> list[Appended]:
        """Appends validated events (ids set; `generated[i]` when the bus made the id) and
        returns once they are durable."""
        return await self._committer.submit(_Pending(batch, generated))

    async def _commit(self, group: list[_Pending]) -> list[list[Appended]]:
        now = max(self.clock(), self._last_published_at)
        # Optimistic: repeats are rare (client retries), so write first and let the unique
        # index object; only then look the group's ids up and redo it.
        plan = self._plan_new(group, now)
        with tracing.commit_span(plan.fresh, len(group)):
            plan = await self._write(group, plan, now)
        # Durable from here on: advance the head and hand the events to live readers; the
        # committer answers the publishers when this returns.
        self.head = plan.head
        self._last_published_at = now
        self.duplicates += plan.duplicates
        sizes = self._remember(plan.rows)
        self._fan_out(plan.fresh, sizes)
        return plan.answers

    def _remember(self, rows: list[RowValues]) -> list[int]:
        """Keeps the committed rows' bytes for `encode`, dropping the oldest past the
        count and byte limits; returns each row's size."""
        if not rows:
            return []
        recent = self._recent
        sequences = list(map(_ROW_SEQUENCE, rows))
        payloads = list(map(_ROW_PAYLOAD, rows))
        recent.update(zip(sequences, payloads, strict=True))
        sizes = list(map(len, payloads))
        size = self._recent_bytes + sum(sizes)
        first, last = self._recent_first, sequences[-1]
        pop = recent.pop
        while first <= last and (last - first >= self._recent_limit or size > RECENT_BYTES):
            dropped = pop(first, None)
            if dropped is not None:
                size -= len(dropped)
            first += 1
        self._recent_first, self._recent_bytes = first, size
        return sizes

    def encode(self, events: Sequence[event_pb2.Event]) -> list[bytes]:
        """Each event as stored (its serialization, sequence included): the bytes kept
        from its commit when it is recent, else serialized now."""
        encoded = list(map(self._recent.get, map(_SEQUENCE, events)))
        if not all(encoded):
            encoded = [
                stored or event.SerializeToString()
                for stored, event in zip(encoded, events, strict=True)
            ]
        return encoded  # type: ignore[return-value]  # every None was replaced just above

    async def _write(self, group: list[_Pending], plan: _Plan, now: float) -> _Plan:
        """Writes the plan; on a repeat (of a stored event, or within the group), re-plans
        with the stored ones known and writes again. Returns the plan that was written."""
        try:
            await self.store.append(plan.rows, plan.by_type)
        except DuplicateEvent:
            keys = {
                (event.source_domain, event.id)
                for pending in group
                for event, gen in zip(pending.events, pending.generated, strict=True)
                if not gen
            }
            plan = self._plan(group, await self.store.existing(keys), now)
            if plan.rows:
                await self.store.append(plan.rows, plan.by_type)
        return plan

    def _plan_new(self, group: list[_Pending], now: float) -> _Plan:
        """The plan of a group whose events are all new (the optimistic first plan): each
        takes the next sequence, in order.

        Built a column at a time, each in one pass that runs in C where it can (`map` of an
        attribute getter or of `SerializeToString`, `zip` into the rows), instead of one
        Python iteration per event doing everything: about a third less time.
        """
        events = list(chain.from_iterable(pending.events for pending in group))
        first = self.head + 1
        sequences = range(first, first + len(events))
        for event, sequence in zip(events, sequences, strict=True):
            event.sequence = sequence
        ids = list(map(_EVENT_ID, events))
        types = list(map(_EVENT_TYPE, events))
        rows: list[RowValues] = list(
            zip(
                sequences,
                map(_SOURCE_DOMAIN, events),
                ids,
                types,
                repeat(now),
                map(_SERIALIZE, events),
            )
        )
        # The tuple constructor with the type given: a NamedTuple without its constructor's
        # Python frame.
        appended: list[Appended] = list(
            map(tuple.__new__, repeat(Appended), zip(ids, sequences, repeat(False), repeat(now)))
        )
        answers = []
        start = 0
        for pending in group:
            end = start + len(pending.events)
            answers.append(appended[start:end])
            start = end
        return _Plan(
            head=first + len(events) - 1,
            rows=rows,
            by_type=dict(Counter(types)),
            fresh=events,
            answers=answers,
        )

    def _plan(self, group: list[_Pending], known: dict[tuple[str, str], int], now: float) -> _Plan:
        """Assigns sequences to the group's new events; repeats get the original sequence
        (`known`: the stored (source, id) pairs among the group's; a repeat within the
        group is added to it as it is planned)."""
        plan = _Plan(head=self.head)
        sequence = self.head
        rows, by_type, fresh = plan.rows, plan.by_type, plan.fresh
        # Per event: each field read once (a protobuf attribute read costs more than a
        # local), and the row and answer tuples built without the NamedTuple constructors'
        # Python frames.
        new = tuple.__new__
        for pending in group:
            answer: list[Appended] = []
            add_answer = answer.append
            for event in pending.events:
                event_id, source = event.id, event.source_domain
                key = (source, event_id)
                original = known.get(key)
                if original is not None:
                    add_answer(new(Appended, (event_id, original, True, now)))
                    plan.duplicates += 1
                    continue
                sequence += 1
                known[key] = sequence
                event.sequence = sequence
                event_type = event.event_type
                rows.append(
                    new(
                        EventRow,
                        (sequence, source, event_id, event_type, now, event.SerializeToString()),
                    )
                )
                by_type[event_type] = by_type.get(event_type, 0) + 1
                fresh.append(event)
                add_answer(new(Appended, (event_id, sequence, False, now)))
            plan.answers.append(answer)
        plan.head = sequence
        return plan

    def _fan_out(self, fresh: list[event_pb2.Event], sizes: list[int]) -> None:
        fan_out(self.index, fresh, sizes)

    # -- reading ---------------------------------------------------------------------

    async def scan(
        self,
        after: int,
        upto: int,
        limit: int,
        log_filter: LogFilter,
        *,
        newest_first: bool = False,
        start_time: float = 0.0,
        end_time: float = 0.0,
    ) -> list[EventRow]:
        """Stored rows with after < sequence <= upto passing the SQL pre-filter."""
        return await self.store.read(
            after,
            upto,
            limit,
            log_filter,
            newest_first=newest_first,
            start_time=start_time,
            end_time=end_time,
        )

    async def type_counts(self) -> dict[str, int]:
        """Events stored per type since the log began."""
        return await self.store.type_counts()

    async def read(
        self, after: int, limit: int, log_filter: LogFilter
    ) -> tuple[list[event_pb2.Event], int]:
        """Up to `limit` matching events after `after`, and the last sequence examined."""
        upto = self.head
        if after >= upto:
            return [], after
        rows = await self.store.read(max(after, self.first - 1), upto, limit, log_filter)
        scanned = rows[-1].sequence if len(rows) == limit else upto
        return [decode(row) for row in rows if _wanted(row, log_filter)], scanned

    async def sequence_at(self, when: float) -> int:
        """The first retained sequence published at or after `when` (head + 1 if none)."""
        low, high = self.first, self.head + 1
        while low < high:
            mid = (low + high) // 2
            at = await self.store.published_at(mid)
            if at is None or at < when:  # None: cut by retention meanwhile
                low = mid + 1
            else:
                high = mid
        return low

    async def resolve_start(self, spec: StartSpec) -> int:
        """The cursor (last sequence already seen) for a start position."""
        if spec.kind is Start.ALL:
            return self.first - 1
        if spec.kind is Start.SEQUENCE:
            return max(0, min(spec.sequence, self.head + 1) - 1)
        if spec.kind is Start.TIME:
            return await self.sequence_at(spec.time) - 1
        return self.head

    # -- retention -------------------------------------------------------------------

    async def enforce_retention(self) -> int:
        """Deletes events past the age and count limits; returns how many went."""
        cut = self.first
        if self.settings.retention_max_count and self.head - self.first + 1 > (
            self.settings.retention_max_count
        ):
            cut = self.head - self.settings.retention_max_count + 1
        if self.settings.retention_max_age_s:
            cut = max(cut, await self.sequence_at(self.clock() - self.settings.retention_max_age_s))
        if cut <= self.first:
            return 0
        removed = await self.store.truncate_before(cut)
        self.first = cut
        log.info("retention removed %d events; log now starts at %d", removed, cut)
        return removed


def decode(row: EventRow) -> event_pb2.Event:
    """The Event stored in a row, with the row's sequence."""
    event = event_pb2.Event()
    event.ParseFromString(row.payload)
    event.sequence = row.sequence
    return event


def _wanted(row: EventRow, log_filter: LogFilter) -> bool:
    return wanted(row.event_type, row.source_domain, log_filter)


def wanted(event_type: str, source_domain: str, log_filter: LogFilter) -> bool:
    """True when an event of this type and source passes the filter exactly."""
    if log_filter.source_domain and source_domain != log_filter.source_domain:
        return False
    patterns = log_filter.patterns
    return not patterns or any(matches(p, event_type) for p in patterns)


def fan_out(
    index: PatternIndex[Reader], fresh: Sequence[event_pb2.Event], sizes: Sequence[int]
) -> None:
    """Offers newly durable events, in sequence order, to the live readers that want them
    (`sizes`: each event's stored bytes, which bound a reader's queue).

    The events are cut into runs of one type (a group's events mostly share a few types);
    the readers are looked up once per run and handed the whole run, and each reader then
    takes its events in one call, instead of one `offer` per event and reader.
    """
    runs: list[tuple[str, list[event_pb2.Event], list[int]]] = []
    last_type: str | None = None
    run: list[event_pb2.Event] = []
    run_sizes: list[int] = []
    for event, size in zip(fresh, sizes, strict=True):
        event_type = event.event_type
        if event_type != last_type:
            run, run_sizes, last_type = [], [], event_type
            runs.append((event_type, run, run_sizes))
        run.append(event)
        run_sizes.append(size)
    lookup = index.lookup
    taken: dict[Reader, tuple[list[event_pb2.Event], list[int]]] = {}
    for event_type, run, run_sizes in runs:
        for reader in lookup(event_type):
            got = taken.get(reader)
            if got is None:
                taken[reader] = (run.copy(), run_sizes.copy())  # a later run may be added
            else:
                got[0].extend(run)
                got[1].extend(run_sizes)
    for reader, (events, event_sizes) in taken.items():
        if reader.offer_all(events, event_sizes):
            reader.notify()


class Reader:
    """One consumer's position in the log: a live queue while it keeps up, the log when not.

    A live reader gets matching events pushed by the committer into a bounded queue. If
    the queue overflows (the consumer stalled), the queue is dropped and the reader reads
    from the stored log until it is caught up, then goes live again. Memory per reader is
    bounded by `queue_limit` events and `queue_bytes` of them (events carry up to a MiB of
    data, so a count alone would let one stalled reader hold gigabytes), and nobody waits
    for a slow reader.

    Args:
        event_log: The log.
        log_filter: Patterns and source.
        cursor: Last sequence already seen.
        queue_limit: Most events buffered while live.
        queue_bytes: Most bytes of events (as stored) buffered while live.
    """

    def __init__(
        self,
        event_log: Log,
        log_filter: LogFilter,
        cursor: int,
        queue_limit: int,
        queue_bytes: int = DEFAULT_READER_QUEUE_BYTES,
    ) -> None:
        self.log = event_log
        self.filter = log_filter
        self.cursor = cursor
        self.queue_limit = queue_limit
        self.queue_bytes = queue_bytes
        self.live = False
        self.overflows = 0
        self._queue: list[event_pb2.Event] = []
        self._sizes: list[int] = []  # of the queued events, in the same order
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self._closed = False

    def __enter__(self) -> Reader:
        self.log.readers.add(self)
        self.log.index.add(self, self.filter.patterns or ("*",))
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Ends the reader: `next_batch` returns an empty list."""
        self._closed = True
        self.log.index.remove(self)
        self.log.readers.discard(self)
        self._drop_queue()
        self._wake.set()

    @property
    def queued(self) -> int:
        """Events buffered now."""
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        """Bytes of the events buffered now, as stored."""
        return self._queued_bytes

    def _drop_queue(self) -> None:
        self._queue.clear()
        self._sizes.clear()
        self._queued_bytes = 0

    def offer(self, event: event_pb2.Event) -> bool:
        """`offer_all` for one event; True when queued."""
        return self.offer_all([event], [event.ByteSize()])

    def offer_all(self, events: list[event_pb2.Event], sizes: list[int]) -> bool:
        """Called by the fan-out with matching events in sequence order and their stored
        sizes; True when any was queued."""
        if not self.live:
            return False
        cursor, source = self.cursor, self.filter.source_domain
        if events[0].sequence <= cursor or source:
            kept = [
                (event, size)
                for event, size in zip(events, sizes, strict=True)
                if event.sequence > cursor and (not source or event.source_domain == source)
            ]
            events = [event for event, _ in kept]
            sizes = [size for _, size in kept]
        if not events:
            return False
        added = sum(sizes)
        if (
            len(self._queue) + len(events) > self.queue_limit
            or self._queued_bytes + added > self.queue_bytes
        ):
            # Too far behind: drop the buffer and read the log instead.
            self.live = False
            self.overflows += 1
            self._drop_queue()
            self._wake.set()
            return False
        self._queue.extend(events)
        self._sizes.extend(sizes)
        self._queued_bytes += added
        return True

    def notify(self) -> None:
        """Wakes `next_batch`."""
        self._wake.set()

    async def next_batch(self, limit: int) -> list[event_pb2.Event]:
        """The next events in sequence order (waits for some); empty once closed."""
        while not self._closed:
            if self.live:
                if self._queue:
                    batch = self._queue[:limit]
                    del self._queue[:limit]
                    self._queued_bytes -= sum(self._sizes[:limit])
                    del self._sizes[:limit]
                    self.cursor = batch[-1].sequence
                    return batch
                self._wake.clear()
                await self._wake.wait()
                continue
            batch, scanned = await self.log.read(self.cursor, limit, self.filter)
            if self._closed:
                break
            self.cursor = max(self.cursor, scanned)
            if self.cursor >= self.log.head:
                # Caught up. Events committed later are offered to the queue; any already
                # read from the log are skipped by `offer` (sequence <= cursor).
                self.live = True
            if batch:
                return batch
        return []

    def lag(self) -> int:
        """Events in the log after the cursor."""
        return max(0, self.log.head - self.cursor)
