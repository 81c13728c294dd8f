"""Push subscriptions: the bus delivers matching events to a domain's DeliverEvent RPC.

Each subscription has one worker that reads the log through its own `Reader` and delivers
events in sequence order: one per DeliverEvent call, or, when several are waiting, up to
`push_batch` of them in one DeliverEvents call, which the domain handles in order up to the
first it does not acknowledge (a domain without DeliverEvents gets one call per event). The
domain answers ACK, RETRY or DROP per event; errors and RETRY are retried with exponential
backoff (the domain may ask for a longer wait), and after `max_attempts` (or at once on
DROP) the event becomes a dead letter and delivery moves on.
Positions are persisted every `flush_interval_s` and on stop, so after a restart delivery
resumes where it was; at worst an event in flight is delivered again (at-least-once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Protocol

import grpc

from grace.domain.v1 import domain_pb2, domain_pb2_grpc
from grace.eventbus.v1 import event_pb2
from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.channels import channel
from services.common.completion import runs_to_completion
from services.common.pagination import MAX_PAGE_BYTES
from services.eventbus import tracing
from services.eventbus.eventlog import Log, Reader
from services.eventbus.model import BusSettings, DeadLetterRecord, SubscriptionState
from services.eventbus.store import BusState, LogFilter
from services.eventbus.telemetry import BusTraffic

log = logging.getLogger(__name__)

# Most events a worker takes from its reader at once (more when `push_batch` is larger, so
# that one DeliverEvents call can carry that many).
_WORKER_BATCH = 100


# A domain that answered DeliverEvents with UNIMPLEMENTED is tried with batches again after
# this long (it may have been upgraded meanwhile).
BATCH_RETRY_AFTER_S = 60.0
_UNIMPLEMENTED = "UNIMPLEMENTED"
_ACK = domain_pb2.DELIVERY_OUTCOME_ACK
_RETRY = domain_pb2.DELIVERY_OUTCOME_RETRY


def _outcome(
    response: domain_pb2.DeliverEventResponse,
) -> tuple[domain_pb2.DeliveryOutcome.ValueType, float, str]:
    """A domain's answer for one event: the outcome (RETRY when unset), the least wait it
    asked for and the reason."""
    retry_after = response.retry_after.seconds + response.retry_after.nanos / 1e9
    outcome = response.outcome or _RETRY
    reason = response.reason or domain_pb2.DeliveryOutcome.Name(outcome)
    return outcome, retry_after, reason


class DomainResolver:
    """Finds a domain's address through the registry, with a short cache, and keeps one
    channel per address.

    Args:
        registry_address: `host:port` of the registry.
        cache_ttl_s: How long a resolved address is reused.
        clock: Monotonic seconds.
    """

    def __init__(
        self,
        registry_address: str,
        cache_ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry_address = registry_address
        self.cache_ttl_s = cache_ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[str, float]] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _channel(self, address: str) -> grpc.aio.Channel:
        chan = self._channels.get(address)
        if chan is None:
            chan = self._channels[address] = channel(address)
        return chan

    async def stub(
        self, domain_id: str, timeout_s: float
    ) -> domain_pb2_grpc.DomainServiceAsyncStub:
        """A DomainService stub for the domain; raises grpc errors from the registry."""
        cached = self._cache.get(domain_id)
        if cached is None or cached[1] < self._clock():
            registry = registry_pb2_grpc.RegistryServiceStub(self._channel(self.registry_address))
            response = await registry.GetDomain(
                registry_pb2.GetDomainRequest(domain_id=domain_id), timeout=timeout_s
            )
            cached = (response.domain.address, self._clock() + self.cache_ttl_s)
            self._cache[domain_id] = cached
        return domain_pb2_grpc.DomainServiceStub(self._channel(cached[0]))

    def forget(self, domain_id: str) -> None:
        """Drops a cached address (after a failed call: the domain may have moved)."""
        self._cache.pop(domain_id, None)

    async def close(self) -> None:
        """Closes every channel."""
        for chan in self._channels.values():
            await chan.close()
        self._channels.clear()


class Worker(Protocol):
    """What push delivery needs of a subscription's worker."""

    sub: SubscriptionState

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    def position(self) -> int: ...


class PushWorker:
    """Delivers one subscription's events.

    Args:
        sub: The subscription (its counters are updated in place).
        deliveries: The owner, for the log, the resolver, settings and dead letters.
    """

    def __init__(self, sub: SubscriptionState, deliveries: PushDelivery) -> None:
        self.sub = sub
        self.owner = deliveries
        self.reader = Reader(
            deliveries.log,
            LogFilter(sub.patterns),
            sub.delivered_sequence,
            deliveries.settings.reader_queue_limit,
            deliveries.settings.reader_queue_bytes,
        )
        self.in_flight: event_pb2.Event | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Starts delivering in the background."""
        self.task = asyncio.create_task(self.run(), name=f"push-{self.sub.subscription_id}")

    async def stop(self) -> None:
        """Stops delivering; the position is what `position` says."""
        self.reader.close()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def position(self) -> int:
        """The sequence up to which every matching event has been handled."""
        if self.in_flight is not None:
            # Events of the batch under way are handled in order; `finished` has moved the
            # subscription's sequence past those done.
            return max(self.in_flight.sequence - 1, self.sub.delivered_sequence)
        if self.reader.live and not self.reader.queued:
            return max(self.reader.cursor, self.owner.log.head)
        return self.reader.cursor

    def finished(self, event: event_pb2.Event) -> None:
        """Records that an event was acknowledged or dead-lettered (called in order)."""
        self.sub.delivered_sequence = event.sequence

    async def run(self) -> None:
        """Delivers events in order until stopped."""
        take = max(_WORKER_BATCH, self.owner.settings.push_batch)
        with self.reader:
            while True:
                batch = await self.reader.next_batch(take)
                if not batch:
                    return
                done = 0
                while done < len(batch):
                    self.in_flight = batch[done]
                    try:
                        done += await self.owner.deliver_some(self.sub, batch[done:], self.finished)
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        # A dead letter could not be stored: keep the event in flight and
                        # try it again rather than skip it.
                        log.exception("subscription %s: delivery failed", self.sub.subscription_id)
                        await asyncio.sleep(self.owner.settings.push_max_backoff_s)
                self.in_flight = None


class PushDelivery:
    """Every push subscription's worker, the dead letters and their redelivery.

    Args:
        event_log: The log.
        store: Durable state (the bus's tables, or JetStream: see `jetstream_push`).
        resolver: Domain addresses.
        settings: Retry and flush tunables.
        clock: Epoch seconds.
        traffic: Counts each delivery for the unified telemetry; None counts nothing.
    """

    def __init__(
        self,
        event_log: Log,
        store: BusState,
        resolver: DomainResolver,
        settings: BusSettings,
        clock: Callable[[], float] = time.time,
        traffic: BusTraffic | None = None,
    ) -> None:
        self.log = event_log
        self.store = store
        self.resolver = resolver
        self.settings = settings
        self.clock = clock
        self.traffic = traffic
        self.workers: dict[str, Worker] = {}
        self.delivered_total = 0
        self._redeliveries: set[asyncio.Task[None]] = set()
        # Dead letters this bus is delivering again, by id: a second request for one of
        # them joins the delivery under way instead of starting another.
        self._redelivering: dict[str, DeadLetterRecord] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._flushed: dict[str, tuple[object, ...]] = {}
        # Domains that answered DeliverEvents with UNIMPLEMENTED (served by another
        # implementation of the contract): until when they get one DeliverEvent per event.
        self._one_at_a_time_until: dict[str, float] = {}

    async def open(self) -> None:
        """Resumes every stored subscription and pending redelivery."""
        self.delivered_total = (await self.store.counters()).get("delivered_total", 0)
        for sub in await self.store.subscriptions():
            self.start_worker(sub)
        for record in await self.store.dead_letters(limit=1_000_000, redelivering=True):
            self._spawn_redelivery(record)
        self._flusher = asyncio.create_task(self._flush_loop(), name="eventbus-flush")

    async def close(self) -> None:
        """Stops every worker and persists positions."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        for task in list(self._redeliveries):
            task.cancel()
        for worker in list(self.workers.values()):
            await worker.stop()
        self._flushed.clear()  # write every position once more, whatever was in flight
        await self.flush()
        await self.resolver.close()

    async def refresh(self) -> None:
        """Takes up subscriptions other instances changed: none here (one process owns
        the tables)."""

    def start_worker(self, sub: SubscriptionState) -> None:
        """Starts delivering a subscription."""
        worker = PushWorker(sub, self)
        self.workers[sub.subscription_id] = worker
        worker.start()

    async def stop_worker(self, subscription_id: str) -> None:
        """Stops delivering a subscription."""
        worker = self.workers.pop(subscription_id, None)
        if worker is not None:
            await worker.stop()
        self._flushed.pop(subscription_id, None)

    # -- delivery --------------------------------------------------------------------

    async def deliver_some(
        self,
        sub: SubscriptionState,
        events: Sequence[event_pb2.Event],
        finished: Callable[[event_pb2.Event], None],
    ) -> int:
        """Delivers the first of `events` in order, or several of them in one DeliverEvents
        call when more than one is waiting; returns how many are done (acknowledged or
        dead-lettered), calling `finished` for each as it is."""
        batch = self._batch(sub, events)
        if len(batch) > 1:
            done = await self._deliver_batch(sub, batch, finished)
            if done is not None:
                return done
        await self.deliver(sub, events[0])
        finished(events[0])
        return 1

    def _batch(
        self, sub: SubscriptionState, events: Sequence[event_pb2.Event]
    ) -> Sequence[event_pb2.Event]:
        """The events to push together: up to `push_batch` of them and MAX_PAGE_BYTES of
        their bytes (one at least), or only the first when the domain takes one at a time."""
        limit = self.settings.push_batch
        if limit <= 1 or len(events) == 1:
            return events[:1]
        until = self._one_at_a_time_until.get(sub.domain_id)
        if until is not None:
            if until > time.monotonic():
                return events[:1]
            del self._one_at_a_time_until[sub.domain_id]  # try batches again
        size = 0
        for taken, event in enumerate(events[:limit]):
            size += event.ByteSize()
            if taken and size > MAX_PAGE_BYTES:
                return events[:taken]
        return events[:limit]

    async def _deliver_batch(
        self,
        sub: SubscriptionState,
        batch: Sequence[event_pb2.Event],
        finished: Callable[[event_pb2.Event], None],
    ) -> int | None:
        """Pushes the batch through DeliverEvents until every event is acknowledged or
        dead-lettered, retrying the first one not acknowledged as `deliver` retries one
        event (and then the rest after it). Returns how many are done: all of them, or None
        when the domain has no DeliverEvents (nothing was delivered)."""
        done = 0
        attempt = 1  # of batch[done], in the next call
        while done < len(batch):
            rest = batch[done:]
            started = time.monotonic()
            with tracing.push_batch_span(rest, sub.subscription_id, sub.domain_id):
                results, error = await self._call_batch(sub, rest, attempt)
                if error == _UNIMPLEMENTED:
                    # The rest goes one event per call (see `_batch`).
                    self._one_at_a_time_until[sub.domain_id] = started + BATCH_RETRY_AFTER_S
                    return done or None
                acked = 0
                while acked < min(len(results), len(rest)) and results[acked].outcome == _ACK:
                    acked += 1
                if acked < len(rest):
                    tracing.mark_failed(f"{len(rest) - acked} of {len(rest)} not acknowledged")
            elapsed = time.monotonic() - started
            for event in rest[:acked]:
                sub.delivered_count += 1
                self.delivered_total += 1
                if self.traffic is not None:
                    self.traffic.delivered(event, sub.domain_id, elapsed, ok=True)
                finished(event)
            done += acked
            if done == len(batch):
                break
            # The event after the acknowledged ones: this call was its attempt `attempt` when
            # it came first, else its first.
            tried = attempt if acked == 0 else 1
            if error is not None:
                outcome, retry_after, reason = _RETRY, 0.0, error
            elif acked < len(results):
                outcome, retry_after, reason = _outcome(results[acked])
            elif acked:
                attempt = 1  # the domain stopped early without failing one: go on at once
                continue
            else:
                outcome, retry_after, reason = _RETRY, 0.0, "the domain handled none of the events"
            event = batch[done]
            sub.last_error = reason
            if outcome == domain_pb2.DELIVERY_OUTCOME_DROP or tried >= sub.max_attempts:
                if self.traffic is not None:
                    self.traffic.delivered(event, sub.domain_id, elapsed, ok=False)
                await self._dead_letter(sub, event, tried, reason, str(uuid.uuid4()))
                finished(event)
                done += 1
                attempt = 1
            else:
                await asyncio.sleep(self.backoff(tried, retry_after))
                sub.redelivery_count += 1
                attempt = tried + 1
        return done

    async def _call_batch(
        self, sub: SubscriptionState, events: Sequence[event_pb2.Event], attempt: int
    ) -> tuple[Sequence[domain_pb2.DeliverEventResponse], str | None]:
        """One DeliverEvents call: the results, or why the call failed (`_UNIMPLEMENTED`
        when the domain does not serve it)."""
        timeout = self.settings.push_timeout_s
        try:
            stub = await self.resolver.stub(sub.domain_id, timeout)
            response = await stub.DeliverEvents(
                domain_pb2.DeliverEventsRequest(
                    domain_id=sub.domain_id,
                    subscription_id=sub.subscription_id,
                    events=events,
                    attempt=attempt,
                ),
                timeout=timeout,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                return (), _UNIMPLEMENTED
            self.resolver.forget(sub.domain_id)
            return (), f"{exc.code().name}: {exc.details()}"
        return response.results, None

    async def deliver(self, sub: SubscriptionState, event: event_pb2.Event) -> None:
        """Delivers one event with retries; dead-letters it when that fails."""
        started = time.monotonic()
        with tracing.push_span(event, sub.subscription_id, sub.domain_id):
            ok, attempts, reason = await self._attempts(sub, event)
            if not ok:
                tracing.mark_failed(f"dead-lettered after {attempts} attempts: {reason}")
        if self.traffic is not None:
            self.traffic.delivered(event, sub.domain_id, time.monotonic() - started, ok=ok)
        if not ok:
            await self._dead_letter(sub, event, attempts, reason, str(uuid.uuid4()))

    async def _attempts(
        self, sub: SubscriptionState, event: event_pb2.Event
    ) -> tuple[bool, int, str]:
        attempt = 0
        while True:
            attempt += 1
            if attempt > 1:
                sub.redelivery_count += 1
            outcome, retry_after, reason = await self._attempt(sub, event, attempt)
            if outcome == domain_pb2.DELIVERY_OUTCOME_ACK:
                sub.delivered_count += 1
                self.delivered_total += 1
                return True, attempt, ""
            sub.last_error = reason
            if outcome == domain_pb2.DELIVERY_OUTCOME_DROP or attempt >= sub.max_attempts:
                return False, attempt, reason
            await asyncio.sleep(self.backoff(attempt, retry_after))

    def backoff(self, attempt: int, retry_after: float) -> float:
        """The wait after a failed attempt: doubling, or longer if the domain asked."""
        backoff = min(
            self.settings.push_max_backoff_s,
            self.settings.push_initial_backoff_s * 2 ** (attempt - 1),
        )
        return float(max(backoff, min(retry_after, self.settings.push_max_backoff_s)))

    async def _attempt(
        self, sub: SubscriptionState, event: event_pb2.Event, attempt: int
    ) -> tuple[int, float, str]:
        timeout = self.settings.push_timeout_s
        try:
            stub = await self.resolver.stub(sub.domain_id, timeout)
            response = await stub.DeliverEvent(
                domain_pb2.DeliverEventRequest(
                    domain_id=sub.domain_id,
                    subscription_id=sub.subscription_id,
                    event=event,
                    attempt=attempt,
                ),
                timeout=timeout,
            )
        except grpc.aio.AioRpcError as exc:
            self.resolver.forget(sub.domain_id)
            return domain_pb2.DELIVERY_OUTCOME_RETRY, 0.0, f"{exc.code().name}: {exc.details()}"
        return _outcome(response)

    async def _dead_letter(
        self,
        sub: SubscriptionState,
        event: event_pb2.Event,
        attempts: int,
        reason: str,
        dead_letter_id: str,
    ) -> None:
        await self.store.add_dead_letter(
            DeadLetterRecord(
                dead_letter_id=dead_letter_id,
                subscription_id=sub.subscription_id,
                domain_id=sub.domain_id,
                sequence=event.sequence,
                event=event.SerializeToString(),
                attempts=attempts,
                reason=reason[:1024],
                failed_at=self.clock(),
            )
        )
        sub.dead_letter_count += 1
        log.warning(
            "subscription %s: event %d dead-lettered after %d attempts: %s",
            sub.subscription_id,
            event.sequence,
            attempts,
            reason,
        )

    # -- redelivery --------------------------------------------------------------------

    def _spawn_redelivery(self, record: DeadLetterRecord) -> None:
        self._redelivering[record.dead_letter_id] = record
        task = asyncio.create_task(self._redeliver(record), name=f"redeliver-{record.sequence}")
        self._redeliveries.add(task)

        def ended(task: asyncio.Task[None]) -> None:
            self._redeliveries.discard(task)
            self._redelivering.pop(record.dead_letter_id, None)

        task.add_done_callback(ended)

    @runs_to_completion
    async def redeliver(self, record: DeadLetterRecord) -> DeadLetterRecord:
        """Marks a dead letter for redelivery (durably) and starts delivering it; a dead
        letter this bus is already delivering again is left to that delivery.

        Both happen even when the caller goes away in between: a record marked but never
        delivered would stay so until a restart, since a retry finds it marked and leaves it.
        """
        under_way = self._redelivering.get(record.dead_letter_id)
        if under_way is not None:
            return under_way
        marked = DeadLetterRecord(**{**record.__dict__, "redelivering": True})
        # Claimed before the first await: concurrent requests find it and join.
        self._redelivering[record.dead_letter_id] = marked
        try:
            await self.store.add_dead_letter(marked)
        except BaseException:
            self._redelivering.pop(record.dead_letter_id, None)
            raise
        self._spawn_redelivery(marked)
        return marked

    async def _redeliver(self, record: DeadLetterRecord) -> None:
        worker = self.workers.get(record.subscription_id)
        if worker is None:
            # The subscription is gone: nothing to deliver to; leave the dead letter.
            await self.store.add_dead_letter(
                DeadLetterRecord(**{**record.__dict__, "redelivering": False})
            )
            return
        event = event_pb2.Event()
        event.ParseFromString(record.event)
        with tracing.push_span(event, worker.sub.subscription_id, worker.sub.domain_id):
            ok, attempts, reason = await self._attempts(worker.sub, event)
            if not ok:
                tracing.mark_failed(f"redelivery failed after {attempts} attempts: {reason}")
        if ok:
            await self.store.remove_dead_letter(record.dead_letter_id)
            worker.sub.dead_letter_count = max(0, worker.sub.dead_letter_count - 1)
        else:
            await self.store.add_dead_letter(
                DeadLetterRecord(
                    **{
                        **record.__dict__,
                        "attempts": record.attempts + attempts,
                        "reason": reason[:1024],
                        "failed_at": self.clock(),
                        "redelivering": False,
                    }
                )
            )

    # -- persistence -------------------------------------------------------------------

    async def flush(self) -> None:
        """Persists positions and counters of subscriptions that changed."""
        changed = []
        for sub_id, worker in self.workers.items():
            worker.sub.delivered_sequence = worker.position()
            sub = worker.sub
            snapshot = (
                sub.delivered_sequence,
                sub.delivered_count,
                sub.redelivery_count,
                sub.dead_letter_count,
                sub.last_error,
            )
            if self._flushed.get(sub_id) != snapshot:
                changed.append((sub, snapshot))
        if changed:
            await self.store.flush([sub for sub, _ in changed], self.delivered_total)
            # Only what was written counts as flushed: a write cut short (cancelled at
            # shutdown, or failed) is written again next time.
            for sub, snapshot in changed:
                if sub.subscription_id in self.workers:
                    self._flushed[sub.subscription_id] = snapshot

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.flush_interval_s)
            try:
                await self.flush()
            except Exception:
                log.exception("persisting subscription positions failed; retrying")
                self._flushed.clear()
