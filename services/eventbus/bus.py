"""The event bus core: validation and every operation the servicer exposes, without gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from grace.eventbus.v1 import event_pb2
from services.common import completion
from services.common.completion import run_to_completion
from services.common.errors import InvalidArgument, NotFound
from services.common.event_verification import EventVerifier
from services.common.pagination import (
    MAX_PAGE_BYTES,
    byte_batches,
    decode_token,
    encode_token,
    encoded_size,
    page_size,
    take_page,
)
from services.common.patterns import matches, validate_pattern
from services.common.validation import require_id
from services.eventbus import tracing
from services.eventbus.delivery import DomainResolver, PushDelivery
from services.eventbus.envelope import DEFAULT_STREAM_BATCH, MAX_STREAM_BATCH, EventValidator
from services.eventbus.eventlog import Appended, Clock, EventLog, Log, Reader, decode
from services.eventbus.model import (
    BusSettings,
    ConsumerState,
    DeadLetterRecord,
    Start,
    StartSpec,
    Stats,
    SubscriptionState,
)
from services.eventbus.pipeline import pipelined
from services.eventbus.store import BusState, EventStore, LogFilter
from services.eventbus.telemetry import BusTraffic

log = logging.getLogger(__name__)
T = TypeVar("T")


class PublishOutcome(NamedTuple):
    """One entry's result: stored/duplicate (`appended`) or rejected (`error`). A tuple:
    one is built per event on the hot path."""

    event_id: str
    appended: Appended | None = None
    error: str = ""


class StreamBatch(NamedTuple):
    """Events a stream sends in one message, and each one's serialized bytes."""

    events: list[event_pb2.Event]
    encoded: list[bytes]


Refusal = Callable[[str], "str | None"]
"""Why the caller may not publish in a source domain's name (None when it may)."""


@dataclass(frozen=True)
class Admission:
    """A batch after validation and signature checks: what to append, and the rejected
    entries' outcomes already in place."""

    outcomes: list[PublishOutcome | None]
    valid: list[event_pb2.Event]
    slots: Sequence[int]
    generated: list[bool]

    def complete(self, appended: Sequence[Appended]) -> list[PublishOutcome]:
        """Every entry's outcome in request order, given the valid entries' results."""
        outcomes = self.outcomes
        new = tuple.__new__  # the NamedTuple constructor's frame, saved once per event
        if len(appended) == len(outcomes):  # nothing rejected: the results in order
            return [new(PublishOutcome, (result.event_id, result, "")) for result in appended]
        for slot, result in zip(self.slots, appended, strict=True):
            outcomes[slot] = new(PublishOutcome, (result.event_id, result, ""))
        return [outcome for outcome in outcomes if outcome is not None]


class EventBus:
    """Publishing, reading, consumers, push subscriptions, history and stats.

    Args:
        store: Durable state besides events: the bus's tables (an `EventStore`), or
            JetStream (`jetstream_state.JetStreamState`).
        settings: Tunables.
        registry_address: Where push delivery resolves domains.
        clock: Epoch seconds; injectable for tests.
        verifier: Checks event signatures at publish (see
            `services.common.event_verification`); None checks nothing.
        event_log: Where events live; None keeps them in `store` (an `EventLog`).
        push: Push delivery; None delivers from the log with positions in `store`.
    """

    def __init__(
        self,
        store: BusState,
        settings: BusSettings,
        registry_address: str,
        clock: Clock = time.time,
        verifier: EventVerifier | None = None,
        event_log: Log | None = None,
        push: PushDelivery | None = None,
    ) -> None:
        self.store = store
        self.verifier = verifier
        self.settings = settings
        self.clock = clock
        if event_log is None:
            if not isinstance(store, EventStore):
                raise TypeError("the built-in event log needs an EventStore")
            event_log = EventLog(store, settings, clock)
        self.log: Log = event_log
        self.validate = EventValidator(settings)
        self.traffic = BusTraffic()
        self.push = push or PushDelivery(
            self.log, store, DomainResolver(registry_address), settings, clock
        )
        # Whichever delivery runs (built-in or on JetStream), it counts in this bus's traffic.
        self.push.traffic = self.traffic
        self.consumers: dict[str, ConsumerState] = {}
        self.streamed = 0
        self.active_streams = 0
        self._retention: asyncio.Task[None] | None = None
        self._changing = asyncio.Lock()

    async def open(self) -> None:
        """Opens storage, loads state, resumes push delivery and starts retention."""
        await self.store.open()
        await self.log.open()
        self.consumers = {c.name: c for c in await self.store.consumers()}
        await self.push.open()
        self._retention = asyncio.create_task(self._retention_loop(), name="eventbus-retention")

    async def begin_close(self) -> None:
        """Ends every stream so shutdown can drain."""
        for reader in list(self.log.readers):
            reader.close()

    async def close(self) -> None:
        """Stops background work and closes storage."""
        if self._retention is not None:
            self._retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention
        # A creation or deletion whose caller went away finishes before the workers stop.
        await completion.drain()
        await self.push.close()
        await self.log.close()
        await self.store.close()

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.retention_interval_s)
            try:
                await self.log.enforce_retention()
            except Exception:
                log.exception("retention failed; retrying next interval")

    # -- publishing ------------------------------------------------------------------

    async def publish(self, event: event_pb2.Event) -> Appended:
        """Validates, stores durably and returns the event's id and sequence."""
        self.validate(event)
        if self.verifier is not None:
            await self.verifier.enforce(event)
        generated = self._prepare(event, time.time_ns())
        started = time.monotonic()
        with tracing.producer_spans((event,)):
            appended = (await self.log.append([event], [generated]))[0]
        self.traffic.published((event,), time.monotonic() - started)
        return appended

    async def publish_batch(self, batch: Sequence[event_pb2.Event]) -> list[PublishOutcome]:
        """Stores the valid entries in order; invalid ones are rejected on their own."""
        admission = await self._admit(batch)
        if not admission.valid:
            return admission.complete([])
        return await self._store(admission)

    def publish_stream(
        self, batches: AsyncIterator[Sequence[event_pb2.Event]], refuse: Refusal | None = None
    ) -> AsyncIterator[list[PublishOutcome]]:
        """Stores each batch as `publish_batch` would, several in flight, and yields their
        outcomes in arrival order, each once durable (see `services.eventbus.pipeline`).

        Args:
            batches: The publisher's messages.
            refuse: Why an event may not be published by this caller (None when it may);
                a refused event is rejected on its own, like an invalid one.
        """
        return pipelined(batches, lambda batch: self._start_batch(batch, refuse))

    async def _start_batch(
        self, batch: Sequence[event_pb2.Event], refuse: Refusal | None
    ) -> tuple[int, asyncio.Future[list[PublishOutcome]]]:
        admission = await self._admit(batch, refuse)
        future: asyncio.Future[list[PublishOutcome]]
        if not admission.valid:
            future = asyncio.get_running_loop().create_future()
            future.set_result(admission.complete([]))
            return len(admission.outcomes), future
        future = asyncio.ensure_future(self._store(admission))
        if not isinstance(self.log, EventLog):
            # The built-in log queues an append the moment the task first runs, so tasks
            # started in order are committed in order. Another backend may await before it
            # queues: there, each message is stored before the next is admitted.
            await asyncio.wait((future,))
        return len(admission.outcomes), future

    async def _store(self, admission: Admission) -> list[PublishOutcome]:
        started = time.monotonic()
        with tracing.producer_spans(admission.valid):
            appended = await self.log.append(admission.valid, admission.generated)
        self.traffic.published(admission.valid, time.monotonic() - started)
        return admission.complete(appended)

    async def _admit(
        self, batch: Sequence[event_pb2.Event], refuse: Refusal | None = None
    ) -> Admission:
        """Validates, checks signatures and prepares (time, id) the entries of a batch."""
        if len(batch) > self.settings.max_batch:
            raise InvalidArgument("events", f"must have at most {self.settings.max_batch} entries")
        events = list(batch)  # one wrapper per element; indexing the repeated field makes more
        outcomes: list[PublishOutcome | None] = [None] * len(events)
        # A refused entry is answered with its refusal, whatever else is wrong with it.
        errors = self._refusals(events, refuse) if refuse is not None else {}
        for index, error in self.validate.batch(events).items():
            errors.setdefault(index, error)
        valid = events
        slots: Sequence[int] = range(len(events))
        if errors:
            for index, error in errors.items():
                outcomes[index] = PublishOutcome(events[index].id, error=error)
            slots = [index for index in slots if index not in errors]
            valid = [events[index] for index in slots]
        if self.verifier is not None and valid:
            # The whole batch at once: a batch signature is verified once for its events.
            denials = await self.verifier.enforce_batch(valid)
            if any(denial is not None for denial in denials):
                kept = [
                    (slot, event)
                    for slot, event, denial in zip(slots, valid, denials, strict=True)
                    if denial is None
                ]
                for slot, event, denial in zip(slots, valid, denials, strict=True):
                    if denial is not None:
                        outcomes[slot] = PublishOutcome(event.id, error=denial.message)
                slots = [slot for slot, _ in kept]
                valid = [event for _, event in kept]
        return Admission(outcomes, valid, slots, self._prepare_all(valid))

    @staticmethod
    def _refusals(events: list[event_pb2.Event], refuse: Refusal) -> dict[int, str]:
        """Why each event the caller may not publish is refused, by index (asked once per
        source)."""
        refusals: dict[str, str | None] = {}
        errors: dict[int, str] = {}
        for index, event in enumerate(events):
            source = event.source_domain
            if source not in refusals:
                refusals[source] = refuse(source)
            refused = refusals[source]
            if refused is not None:
                errors[index] = refused
        return errors

    def _prepare_all(self, events: list[event_pb2.Event]) -> list[bool]:
        """`_prepare` of each event, inlined: it runs once per published event."""
        seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
        # The time as the bytes of an Event with only `time` set: merging them into an event
        # without a time sets exactly that time, in one call instead of a Timestamp wrapper
        # and two field writes (about a third less per event).
        stamp = event_pb2.Event(time=Timestamp(seconds=seconds, nanos=nanos)).SerializeToString()
        generated = [False] * len(events)
        for index, event in enumerate(events):
            if event.sequence:
                event.sequence = 0
            if not event.HasField("time"):
                event.MergeFromString(stamp)
            if not event.id:
                event.id = self.log.new_id()
                generated[index] = True
        return generated

    def _prepare(self, event: event_pb2.Event, now_ns: int) -> bool:
        if event.sequence:
            event.sequence = 0
        if not event.HasField("time"):
            stamp = event.time
            stamp.seconds, stamp.nanos = divmod(now_ns, 1_000_000_000)
        if event.id:
            return False
        event.id = self.log.new_id()
        return True

    # -- streams and consumers -------------------------------------------------------

    async def subscribe(
        self,
        patterns: tuple[str, ...],
        start: StartSpec,
        *,
        consumer: str = "",
        source_domain: str = "",
        max_batch: int = 0,
    ) -> AsyncIterator[StreamBatch]:
        """Yields batches of matching events in sequence order until closed, each with
        its events' serialized bytes (what the stream sends)."""
        if source_domain:
            require_id("source_domain", source_domain)
        if max_batch < 0 or max_batch > MAX_STREAM_BATCH:
            raise InvalidArgument("max_batch", f"must be between 0 and {MAX_STREAM_BATCH}")
        limit = max_batch or DEFAULT_STREAM_BATCH
        cursor = await self._start_cursor(patterns, start, consumer, source_domain)
        reader = Reader(
            self.log,
            LogFilter(patterns, source_domain),
            cursor,
            self.settings.reader_queue_limit,
            self.settings.reader_queue_bytes,
        )
        self.active_streams += 1
        try:
            with reader:
                while True:
                    whole = await reader.next_batch(limit)
                    if not whole:
                        return
                    # A batch of large events would not fit one gRPC message: the stream
                    # would fail on it, and a durable consumer would resume into it forever.
                    encoded = self.log.encode(whole)
                    for cut in byte_batches(encoded):
                        batch = StreamBatch(whole[cut], encoded[cut])
                        self.streamed += len(batch.events)
                        span = tracing.stream_span(batch.events, consumer)
                        try:
                            yield batch
                        finally:
                            if span is not None:
                                span.end()
        finally:
            self.active_streams -= 1

    async def _start_cursor(
        self, patterns: tuple[str, ...], start: StartSpec, consumer: str, source_domain: str
    ) -> int:
        if start.kind is Start.SEQUENCE and start.sequence < 1:
            raise InvalidArgument("start_sequence", "must be at least 1")
        if start.kind is Start.TIME and start.time <= 0:
            raise InvalidArgument("start_time", "is required for START_POSITION_TIME")
        if not consumer:
            return await self.log.resolve_start(start)
        require_id("consumer", consumer)
        existing = await self._consumer(consumer)
        if existing is not None and start.kind is Start.DEFAULT:
            cursor = existing.acked_sequence
        else:
            cursor = await self.log.resolve_start(start)
        state = ConsumerState(consumer, patterns, source_domain, cursor, self.clock())
        await self.store.save_consumer(state)
        self.consumers[consumer] = state
        return cursor

    async def ack(self, consumer: str, sequence: int) -> int:
        """Acknowledges a durable consumer's events up to `sequence`; returns its position."""
        require_id("consumer", consumer)
        state = await self._consumer(consumer)
        if state is None:
            raise NotFound("consumer", consumer)
        if sequence < 0:
            raise InvalidArgument("sequence", "must not be negative")
        if sequence > self.log.head:
            await self.log.sync()
        if sequence > self.log.head:
            raise InvalidArgument(
                "sequence", f"must not exceed the last published sequence {self.log.head}"
            )
        if sequence > state.acked_sequence:
            updated = ConsumerState(
                state.name, state.patterns, state.source_domain, sequence, self.clock()
            )
            await self.store.save_consumer(updated)
            self.consumers[consumer] = updated
            return sequence
        return state.acked_sequence

    async def _consumer(self, name: str) -> ConsumerState | None:
        if self.store.shared:  # another instance may have created or moved it
            state = await self.store.consumer(name)
            if state is None:
                self.consumers.pop(name, None)
            else:
                self.consumers[name] = state
        return self.consumers.get(name)

    # -- push subscriptions ------------------------------------------------------------

    async def create_subscription(
        self,
        domain_id: str,
        patterns: tuple[str, ...],
        *,
        subscription_id: str = "",
        start: StartSpec | None = None,
        max_attempts: int = 0,
    ) -> tuple[SubscriptionState, bool]:
        """Creates a push subscription; the same id with the same spec returns it again."""
        require_id("domain_id", domain_id)
        if subscription_id:
            require_id("subscription_id", subscription_id)
        if not 0 <= max_attempts <= 100:
            raise InvalidArgument("max_attempts", "must be between 0 and 100")
        attempts = max_attempts or self.settings.push_max_attempts
        return await self._subscription_change(
            self._create_subscription(domain_id, patterns, subscription_id, start, attempts)
        )

    async def _subscription_change(self, change: Coroutine[Any, Any, T]) -> T:
        """Runs a creation or deletion of a subscription to its end, one at a time.

        A change stores a row and starts (or stops) a worker: it ends even when its caller
        goes away in between (`run_to_completion`). One at a time, so two creations of one
        id cannot both find it free and both store it.
        """
        return await run_to_completion(self._one_change_at_a_time(change))

    async def _one_change_at_a_time(self, change: Coroutine[Any, Any, T]) -> T:
        async with self._changing:
            return await change

    async def _create_subscription(
        self,
        domain_id: str,
        patterns: tuple[str, ...],
        subscription_id: str,
        start: StartSpec | None,
        attempts: int,
    ) -> tuple[SubscriptionState, bool]:
        await self.push.refresh()
        if subscription_id in self.push.workers:
            sub = self.push.workers[subscription_id].sub
            if sub.same_spec(domain_id, patterns, attempts):
                return sub, False
            raise InvalidArgument(
                "subscription_id", "already names a subscription with a different spec"
            )
        start = start or StartSpec()
        if start.kind is Start.SEQUENCE and start.sequence < 1:
            raise InvalidArgument("start_sequence", "must be at least 1")
        sub = SubscriptionState(
            subscription_id=subscription_id or f"sub-{uuid.uuid4().hex[:16]}",
            domain_id=domain_id,
            patterns=patterns,
            created_at=self.clock(),
            max_attempts=attempts,
            delivered_sequence=await self.log.resolve_start(start),
        )
        await self.store.insert_subscription(sub)
        self.push.start_worker(sub)
        return sub, True

    async def delete_subscription(self, subscription_id: str) -> SubscriptionState:
        """Deletes a push subscription."""
        return await self._subscription_change(self._delete_subscription(subscription_id))

    async def _delete_subscription(self, subscription_id: str) -> SubscriptionState:
        await self.push.refresh()
        sub = self.get_subscription(subscription_id)
        await self.push.stop_worker(subscription_id)
        await self.store.delete_subscription(subscription_id)
        return sub

    def get_subscription(self, subscription_id: str) -> SubscriptionState:
        """One push subscription with its current position, or NotFound."""
        require_id("subscription_id", subscription_id)
        worker = self.push.workers.get(subscription_id)
        if worker is None:
            raise NotFound("subscription", subscription_id)
        worker.sub.delivered_sequence = worker.position()
        return worker.sub

    def list_subscriptions(
        self, *, domain_id: str = "", size: int = 0, token: str = ""
    ) -> tuple[list[SubscriptionState], str]:
        """A page of push subscriptions ordered by id."""
        limit = page_size(size)
        position = decode_token(token)
        after = str(position.get("after", "")) if position else ""
        if domain_id:
            require_id("domain_id", domain_id)
        ids = sorted(
            sub_id
            for sub_id, worker in self.push.workers.items()
            if sub_id > after and (not domain_id or worker.sub.domain_id == domain_id)
        )
        page, more = take_page(
            [self.get_subscription(sub_id) for sub_id in ids[: limit + 1]],
            limit,
            lambda sub: 256 + sum(len(p) + 3 for p in sub.patterns),
        )
        next_token = encode_token({"after": page[-1].subscription_id}) if more else ""
        return page, next_token

    def lag(self, delivered_sequence: int) -> int:
        """Events in the log after a position."""
        return max(0, self.log.head - delivered_sequence)

    # -- dead letters ------------------------------------------------------------------

    async def list_dead_letters(
        self, *, subscription_id: str = "", size: int = 0, token: str = ""
    ) -> tuple[list[DeadLetterRecord], str]:
        """A page of dead letters, newest first."""
        limit = page_size(size)
        if subscription_id:
            require_id("subscription_id", subscription_id)
        position = decode_token(token)
        before = None
        if position:
            try:
                before = (float(position["at"]), str(position["id"]))
            except (KeyError, TypeError, ValueError):
                raise InvalidArgument("page_token", "is not a token this service issued") from None
        records = await self.store.dead_letters(
            subscription_id=subscription_id, before=before, limit=limit + 1
        )
        page, more = take_page(
            records,
            limit,
            lambda r: 256 + len(r.event) + len(r.reason.encode()),
        )
        next_token = ""
        if more:
            last = page[-1]
            next_token = encode_token({"at": last.failed_at, "id": last.dead_letter_id})
        return page, next_token

    async def redeliver_dead_letter(self, dead_letter_id: str) -> DeadLetterRecord:
        """Queues a dead letter for delivery again."""
        require_id("dead_letter_id", dead_letter_id)
        record = await self.store.dead_letter(dead_letter_id)
        if record is None:
            raise NotFound("dead_letter", dead_letter_id)
        if record.subscription_id not in self.push.workers:
            await self.push.refresh()
        if record.subscription_id not in self.push.workers:
            raise NotFound("subscription", record.subscription_id)
        if record.redelivering:
            return record
        return await self.push.redeliver(record)

    # -- history and stats -------------------------------------------------------------

    async def history(
        self,
        *,
        pattern: str = "",
        source_domain: str = "",
        start_time: float = 0.0,
        end_time: float = 0.0,
        size: int = 0,
        token: str = "",
        newest_first: bool = False,
    ) -> tuple[list[event_pb2.Event], str]:
        """A page of retained events matching the filters."""
        limit = page_size(size)
        patterns = (validate_pattern(pattern),) if pattern else ()
        if source_domain:
            require_id("source_domain", source_domain)
        if end_time and start_time and end_time <= start_time:
            raise InvalidArgument("end_time", "must be after start_time")
        position = decode_token(token)
        log_filter = LogFilter(patterns, source_domain)
        await self.log.sync()
        if position is not None:
            mark = position.get("seq")
            if not isinstance(mark, int):
                raise InvalidArgument("page_token", "is not a token this service issued")
        else:
            mark = self.log.head + 1 if newest_first else self.log.first - 1
        found: list[event_pb2.Event] = []
        used = 0
        full = False
        cursor = mark
        chunk = max(limit * 4, 200)
        while len(found) < limit and not full:
            after, upto = (
                (self.log.first - 1, cursor - 1) if newest_first else (cursor, self.log.head)
            )
            if upto <= after:
                break
            rows = await self.log.scan(
                after,
                upto,
                chunk,
                log_filter,
                newest_first=newest_first,
                start_time=start_time,
                end_time=end_time,
            )
            for row in rows:
                cursor = row.sequence
                if patterns and not any(matches(p, row.event_type) for p in patterns):
                    continue
                event = decode(row)
                size = encoded_size(event)
                if found and used + size > MAX_PAGE_BYTES:
                    full = True  # the page ends early; the token resumes after found[-1]
                    break
                found.append(event)
                used += size
                if len(found) == limit:
                    break
            if len(rows) < chunk:
                break
        next_token = ""
        if len(found) == limit or full:
            next_token = encode_token({"seq": found[-1].sequence})
        return found, next_token

    async def stats(self) -> Stats:
        """Counts for GetStats."""
        await self.log.sync()
        await self.push.refresh()
        if self.store.shared:
            self.consumers = {c.name: c for c in await self.store.consumers()}
        subs = [self.get_subscription(sub_id) for sub_id in sorted(self.push.workers)]
        head, first = self.log.head, self.log.first
        return Stats(
            published_total=head,
            duplicates_total=self.log.duplicates,
            streamed_total=self.streamed,
            delivered_total=self.push.delivered_total,
            head_sequence=head,
            first_sequence=first,
            events_by_type=await self.log.type_counts(),
            subscriptions=subs,
            consumers=sorted(self.consumers.values(), key=lambda c: c.name),
            dead_letters=await self.store.count_dead_letters(),
            active_streams=self.active_streams,
            retained_events=max(0, head - first + 1),
        )
