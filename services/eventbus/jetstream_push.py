"""Push delivery on JetStream consumers: every bus instance delivers every subscription,
and JetStream decides who holds each event.

A subscription's consumer (see `jetstream_state`) lets one event out at a time
(`max_ack_pending=1`). Each instance runs a worker per subscription pulling from it; the
worker that gets the event calls the domain once, with the attempt number JetStream
counted (`num_delivered`), and answers JetStream: `ack` on ACK; `nak` with the bus's
backoff (or the domain's `retry_after`) on RETRY or an error, so the next attempt may be
made by any instance; on DROP or the last attempt it stores a dead letter, then acks. An
instance that dies mid-attempt leaves the event unacknowledged: JetStream hands it to
another instance after the ack wait, counting the attempt (`max_deliver` allows one more
delivery than attempts, so even a death during the last one ends in a dead letter).
Events the subject prefilter lets through but the patterns do not match are acked
unseen. Subscriptions created on other instances are found by listing the consumers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

import nats
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError as JsNotFoundError

from grace.domain.v1 import domain_pb2
from grace.eventbus.v1 import event_pb2
from services.eventbus import tracing
from services.eventbus.delivery import DomainResolver, PushDelivery
from services.eventbus.eventlog import Clock, wanted
from services.eventbus.jetstream import JetStreamLog
from services.eventbus.jetstream_state import (
    SUBSCRIPTION,
    JetStreamState,
    durable_name,
    event_of,
    unavailable_on_nats_errors,
)
from services.eventbus.model import BusSettings, SubscriptionState
from services.eventbus.store import LogFilter

log = logging.getLogger(__name__)

# How often an instance looks for subscriptions created or deleted elsewhere.
DISCOVERY_INTERVAL_S = 2.0
# How long one pull waits for an event: short, so a pull left behind by a stopped worker
# cannot hold an event for long.
_PULL_WAIT_S = 1.0
_DEAD_LETTER_IDS = uuid.UUID("0f5e6c1e-6a43-4b4e-9d1c-7b0f3f7a2d10")


class JetStreamPushWorker:
    """Delivers one subscription's events as JetStream hands them to this instance.

    Args:
        sub: The subscription (its counters are updated in place).
        deliveries: The owner: JetStream state, resolver, settings, dead letters.
    """

    def __init__(self, sub: SubscriptionState, deliveries: JetStreamPushDelivery) -> None:
        self.sub = sub
        self.owner = deliveries
        self.name = durable_name(SUBSCRIPTION, sub.subscription_id)
        self.filter = LogFilter(sub.patterns)
        self.in_flight: event_pb2.Event | None = None
        self.task: asyncio.Task[None] | None = None
        self.started_at = time.monotonic()
        self.floor = sub.delivered_sequence
        self.caught_up = False
        self._stopping = False

    def start(self) -> None:
        """Starts pulling in the background."""
        self.task = asyncio.create_task(self.run(), name=f"push-{self.sub.subscription_id}")

    async def wind_down(self) -> None:
        """Lets a pull in progress end (within its wait) instead of cutting it: a pull
        cut short stays at the server until it expires and may take an event that nobody
        here will answer, which JetStream would then hold for the whole ack wait."""
        self._stopping = True
        if self.task is not None and self.in_flight is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.task), _PULL_WAIT_S + 1)

    async def stop(self) -> None:
        """Stops pulling; an event being delivered goes back to JetStream after the ack
        wait (as after a crash)."""
        await self.wind_down()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def position(self) -> int:
        """The sequence up to which every matching event has been handled, as far as this
        instance knows (its own acks, and the consumer's state at the last discovery)."""
        if self.in_flight is not None:
            return self.in_flight.sequence - 1
        if self.caught_up:
            return max(self.floor, self.owner.log.head)
        return self.floor

    def observe(self, info: ConsumerInfo) -> None:
        """Takes the consumer's state as JetStream reports it."""
        if info.ack_floor is not None:
            self.floor = max(self.floor, info.ack_floor.stream_seq)
        self.caught_up = not info.num_pending and not info.num_ack_pending

    async def run(self) -> None:
        """Pulls and delivers until stopped or the subscription is deleted."""
        state = self.owner.state
        pull = None
        try:
            while not self._stopping:
                try:
                    if pull is None:
                        pull = await state.js.pull_subscribe_bind(self.name, state.stream)
                    batch = await pull.fetch(1, timeout=_PULL_WAIT_S)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                except NatsError as exc:
                    if await self._deleted():
                        return
                    log.warning("subscription %s: pull failed: %r", self.sub.subscription_id, exc)
                    await asyncio.sleep(_PULL_WAIT_S)
                    continue
                for msg in batch:
                    if self._stopping:  # hand it straight back, to another instance
                        with contextlib.suppress(NatsError):
                            await msg.nak()
                        continue
                    try:
                        await self._handle(msg)
                    except NatsError as exc:
                        # Not answered: JetStream gives the event out again after the ack
                        # wait (at-least-once).
                        log.warning(
                            "subscription %s: event %d unanswered: %r",
                            self.sub.subscription_id,
                            msg.metadata.sequence.stream,
                            exc,
                        )
        finally:
            if pull is not None:
                with contextlib.suppress(NatsError, asyncio.TimeoutError):
                    await pull.unsubscribe()

    async def _deleted(self) -> bool:
        state = self.owner.state
        try:
            await state.js.consumer_info(state.stream, self.name)
        except JsNotFoundError:
            return True
        except NatsError:
            return False
        return False

    async def _handle(self, msg: Msg) -> None:
        sub, owner = self.sub, self.owner
        event = event_of(msg)
        if not wanted(event.event_type, "", self.filter):
            await msg.ack()  # let through by the subject prefilter only
            self._handled(msg)
            return
        attempt = msg.metadata.num_delivered
        self.in_flight = event
        try:
            if attempt <= sub.max_attempts:
                if attempt > 1:
                    sub.redelivery_count += 1
                with tracing.push_span(event, sub.subscription_id, sub.domain_id):
                    outcome, retry_after, reason = await owner._attempt(sub, event, attempt)
                    final = outcome == domain_pb2.DELIVERY_OUTCOME_DROP or (
                        attempt >= sub.max_attempts
                    )
                    if outcome != domain_pb2.DELIVERY_OUTCOME_ACK and final:
                        tracing.mark_failed(f"dead-lettered after {attempt} attempts: {reason}")
            else:  # the instance making the last attempt died before answering
                outcome, retry_after = domain_pb2.DELIVERY_OUTCOME_DROP, 0.0
                reason = sub.last_error or "attempts exhausted"
                attempt = sub.max_attempts
            if outcome == domain_pb2.DELIVERY_OUTCOME_ACK:
                await msg.ack_sync(timeout=owner.settings.push_timeout_s)
                sub.delivered_count += 1
                owner.delivered_total += 1
            elif outcome == domain_pb2.DELIVERY_OUTCOME_DROP or attempt >= sub.max_attempts:
                sub.last_error = reason
                # The id is the subscription's and the event's: stored again after a
                # crash before the ack, it replaces the first copy.
                dead_letter_id = str(
                    uuid.uuid5(_DEAD_LETTER_IDS, f"{sub.subscription_id}:{event.sequence}")
                )
                await owner._dead_letter(sub, event, attempt, reason, dead_letter_id)
                await msg.ack_sync(timeout=owner.settings.push_timeout_s)
            else:
                sub.last_error = reason
                await msg.nak(delay=owner.backoff(attempt, retry_after))
                return
            self._handled(msg)
        finally:
            self.in_flight = None

    def _handled(self, msg: Msg) -> None:
        self.floor = max(self.floor, msg.metadata.sequence.stream)
        self.caught_up = not msg.metadata.num_pending


class JetStreamPushDelivery(PushDelivery):
    """Push delivery whose workers pull from JetStream consumers (see the module).

    Args:
        event_log: The JetStream log.
        state: Subscriptions, counters and dead letters in JetStream.
        resolver: Domain addresses.
        settings: Retry tunables.
        clock: Epoch seconds.
    """

    def __init__(
        self,
        event_log: JetStreamLog,
        state: JetStreamState,
        resolver: DomainResolver,
        settings: BusSettings,
        clock: Clock = time.time,
    ) -> None:
        super().__init__(event_log, state, resolver, settings, clock)
        self.state = state
        self._discovery: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Starts a worker per subscription and looks for new ones from then on."""
        await super().open()
        self._discovery = asyncio.create_task(self._discover_loop(), name="eventbus-discovery")

    async def close(self) -> None:
        """Stops discovery, every worker, and adds the last counts to the bucket."""
        if self._discovery is not None:
            self._discovery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._discovery
        await asyncio.gather(
            *(
                worker.wind_down()
                for worker in self.workers.values()
                if isinstance(worker, JetStreamPushWorker)
            )
        )
        await super().close()

    def start_worker(self, sub: SubscriptionState) -> None:
        """Starts pulling a subscription's events on this instance."""
        worker = JetStreamPushWorker(sub, self)
        self.workers[sub.subscription_id] = worker
        worker.start()

    @unavailable_on_nats_errors
    async def refresh(self) -> None:
        """Starts workers for subscriptions created elsewhere, stops those deleted
        elsewhere, and takes positions and counters other instances stored."""
        began = time.monotonic()
        infos = await self.state.subscription_infos()
        listed = set()
        for info in infos:
            sub = self.state.subscription_state(info)
            if sub is None:
                continue
            listed.add(sub.subscription_id)
            worker = self.workers.get(sub.subscription_id)
            if worker is None:
                await self.state.load_counts(info.name)
                fresh = self.state.subscription_state(info)
                if fresh is not None:
                    self.start_worker(fresh)
                continue
            assert isinstance(worker, JetStreamPushWorker)
            worker.observe(info)
            await self.state.take_counts(worker.sub)
        for sub_id, worker in list(self.workers.items()):
            # A worker started after the listing began may not be in it yet.
            if (
                sub_id not in listed
                and isinstance(worker, JetStreamPushWorker)
                and worker.started_at < began
            ):
                await self.stop_worker(sub_id)

    async def _discover_loop(self) -> None:
        while True:
            await asyncio.sleep(DISCOVERY_INTERVAL_S)
            try:
                await self.refresh()
            except Exception:
                log.exception("looking for subscriptions failed; retrying")

    async def flush(self) -> None:
        """Adds new counts to the bucket; the bus total takes what every instance added."""
        await super().flush()
        self.delivered_total += self.state.take_bus_gain()


def jetstream_push(
    event_log: JetStreamLog, settings: BusSettings, registry_address: str, clock: Clock
) -> tuple[JetStreamState, JetStreamPushDelivery]:
    """The state and push delivery of a bus on the JetStream backend."""
    state = JetStreamState(event_log, settings)
    push = JetStreamPushDelivery(
        event_log, state, DomainResolver(registry_address), settings, clock
    )
    return state, push
