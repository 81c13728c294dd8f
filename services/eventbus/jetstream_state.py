"""What the bus keeps besides events, kept in JetStream too: durable consumers, push
subscriptions, their counters, and dead letters. With it the bus holds no state of its
own on the JetStream backend, and any instance serves any consumer or subscription.

- A durable `Subscribe` consumer is a JetStream durable consumer `c-<name>` on the event
  stream: the subject prefilter of its patterns, `AckPolicy.ALL`, headers only. Its
  acknowledged position is the consumer's ack floor. The bus's `Ack(sequence)` pulls the
  consumer's messages up to `sequence` (headers only: no payloads cross the network) and
  acknowledges the last of them, which acknowledges every one before it; messages past
  `sequence` are handed back (`nak`). Events the filter leaves out need no ack: a
  consumer resumes after the floor, and nothing it wants lies between the floor and the
  acknowledged sequence. The consumer's spec (patterns, source, the position it was
  created at) is its JSON description.
- A push subscription is a JetStream durable consumer `p-<id>` delivering one message at
  a time (`max_ack_pending=1`, so in order across instances) with `max_deliver`; see
  `jetstream_push`. Its spec is its description; its counters are deltas added to a
  key-value bucket `<stream>_BUS` (`jetstream_counters`), so instances add up.
- Dead letters are messages in the stream `<stream>_DEAD` (`jetstream_deadletters`).

This class has the shape of `EventStore`'s state methods, so `EventBus` and
`PushDelivery` use either (see `store.BusState`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import nats
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
)
from nats.js.errors import NotFoundError as JsNotFoundError

from grace.eventbus.v1 import event_pb2
from services.common.errors import Unavailable
from services.eventbus.jetstream import (
    JetStreamLog,
    stream_sequence,
    subject_filter,
)
from services.eventbus.jetstream_counters import CounterBucket
from services.eventbus.jetstream_deadletters import DeadLetterStream
from services.eventbus.model import BusSettings, ConsumerState, DeadLetterRecord, SubscriptionState

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

CONSUMER = "c-"
SUBSCRIPTION = "p-"
_FETCH = 256
# How long messages an Ack pulled stay owned by it: only an instance dying mid-Ack
# leaves some, and an Ack after this takes them again. An Ack holds them milliseconds.
_ACK_PULL_WAIT_S = 2.0
# The furthest an acknowledgement moves a consumer by pulling; further, it is recreated.
_ACK_PULL_LIMIT = 10_000


def durable_name(kind: str, name: str) -> str:
    """A JetStream consumer name for a bus consumer or subscription id: characters NATS
    does not allow in names (`.`, `:`) and `_` itself are escaped as `_xx`, so distinct
    ids stay distinct."""
    return kind + "".join(
        c if (c.isascii() and c.isalnum()) or c == "-" else f"_{ord(c):02x}" for c in name
    )


def unavailable_on_nats_errors(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """NATS errors become Unavailable (the server is down or did not answer in time), as
    they do for the event log, so clients see UNAVAILABLE and try again."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except NatsError as exc:
            raise Unavailable(f"JetStream request failed: {exc!r}") from exc

    return wrapper


class JetStreamState:
    """Consumers, subscriptions, counters and dead letters in JetStream (implements
    `store.BusState`).

    Args:
        event_log: The JetStream log; its connection and stream are shared.
        settings: Push delivery tunables (timeouts become ack waits).
    """

    shared = True

    def __init__(self, event_log: JetStreamLog, settings: BusSettings) -> None:
        self.log = event_log
        self.settings = settings
        options = event_log.options
        self.stream = options.stream
        self.prefix = options.subject_prefix
        self.dead = DeadLetterStream(event_log)
        self.counts = CounterBucket(event_log, f"{options.stream}_BUS")
        self._bus_gained = 0
        # Reading and adding counts both move `_based`: one at a time, or a count read
        # while another is being added would be counted twice or lost.
        self._counting = asyncio.Lock()

    @property
    def js(self) -> JetStreamContext:
        return self.log.js

    async def open(self) -> None:
        """Connects (through the log) and creates the dead-letter stream and the bucket."""
        await self.log.open()
        await self.dead.open()
        await self.counts.open()

    async def close(self) -> None:
        """Nothing to release: the log owns the connection."""

    # -- durable consumers -------------------------------------------------------------

    async def _info(self, name: str) -> ConsumerInfo | None:
        try:
            info: ConsumerInfo = await self.js.consumer_info(self.stream, name)
            return info
        except JsNotFoundError:
            return None

    async def _infos(self, kind: str) -> list[ConsumerInfo]:
        infos: list[ConsumerInfo] = []
        while True:
            page = await self.js.consumers_info(self.stream, offset=len(infos))
            infos.extend(page)
            if len(page) < _FETCH:
                break
        return [info for info in infos if info.name.startswith(kind)]

    def _consumer_state(self, info: ConsumerInfo) -> ConsumerState | None:
        spec = _description(info)
        if "name" not in spec:
            return None
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        return ConsumerState(
            spec["name"],
            tuple(spec.get("patterns", ())),
            spec.get("source_domain", ""),
            max(floor, int(spec.get("start", 0))),
            float(spec.get("updated_at", 0.0)),
        )

    @unavailable_on_nats_errors
    async def consumers(self) -> list[ConsumerState]:
        """Every durable consumer, with its acknowledged position."""
        states = [self._consumer_state(info) for info in await self._infos(CONSUMER)]
        return sorted((s for s in states if s is not None), key=lambda s: s.name)

    @unavailable_on_nats_errors
    async def consumer(self, name: str) -> ConsumerState | None:
        """One durable consumer, as any instance left it; None if there is none."""
        info = await self._info(durable_name(CONSUMER, name))
        return None if info is None else self._consumer_state(info)

    @unavailable_on_nats_errors
    async def save_consumer(self, consumer: ConsumerState) -> None:
        """Creates the consumer at its position, moves it forward by acknowledging, or
        creates it again: patterns changed, a start before its position, or a jump ahead
        too far to pull the headers of everything in between."""
        name = durable_name(CONSUMER, consumer.name)
        info = await self._info(name)
        state = None if info is None else self._consumer_state(info)
        if (
            state is not None
            and (state.patterns, state.source_domain) == (consumer.patterns, consumer.source_domain)
            and state.acked_sequence
            <= consumer.acked_sequence
            <= state.acked_sequence + _ACK_PULL_LIMIT
        ):
            if consumer.acked_sequence > state.acked_sequence:
                await self._acknowledge(name, consumer.acked_sequence)
            return
        if info is not None:
            with contextlib.suppress(JsNotFoundError):
                await self.js.delete_consumer(self.stream, name)
        spec = {
            "name": consumer.name,
            "patterns": list(consumer.patterns),
            "source_domain": consumer.source_domain,
            "start": consumer.acked_sequence,
            "updated_at": consumer.updated_at,
        }
        await self.js.add_consumer(
            self.stream,
            ConsumerConfig(
                durable_name=name,
                description=json.dumps(spec),
                filter_subject=subject_filter(self.prefix, consumer.patterns),
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=consumer.acked_sequence + 1,
                ack_policy=AckPolicy.ALL,
                ack_wait=_ACK_PULL_WAIT_S,
                max_ack_pending=-1,
                headers_only=True,
            ),
        )

    async def _acknowledge(self, name: str, sequence: int) -> None:
        """Moves the consumer's ack floor past every message at or before `sequence`.

        Pulls and acknowledges as `_pull_and_ack` says, then checks that no message up to
        `sequence` is still held by a pull that will never answer (an instance that died
        mid-Ack): JetStream hands those out again after the ack wait, and the next pull
        acknowledges them. Unavailable if that takes longer than the ack wait.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _ACK_PULL_WAIT_S + self.log.options.timeout_s
        sub = await self.js.pull_subscribe_bind(name, self.stream)
        try:
            while True:
                handed_back = await self._pull_and_ack(sub, sequence)
                info = await self.js.consumer_info(self.stream, name)
                floor = info.ack_floor.stream_seq if info.ack_floor else 0
                if floor >= sequence or (info.num_ack_pending or 0) <= handed_back:
                    return
                if loop.time() > deadline:
                    raise Unavailable(
                        f"consumer {name}: events up to {sequence} are held by another "
                        "acknowledgement; try again"
                    )
                await asyncio.sleep(0.25)
        finally:
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()

    async def _pull_and_ack(self, sub: JetStreamContext.PullSubscription, sequence: int) -> int:
        """Pulls until a message past `sequence` or none left, acknowledges the last one
        at or before it (which acknowledges all before it) and hands the ones past it
        back; returns how many it handed back."""
        while True:
            try:
                batch = await sub.fetch(_FETCH, timeout=0.2)
            except (TimeoutError, nats.errors.TimeoutError):
                return 0
            last: Msg | None = None
            past = []
            for msg in batch:
                if stream_sequence(msg.reply) <= sequence:
                    last = msg
                else:
                    past.append(msg)
            if last is not None:
                await last.ack_sync(timeout=self.log.options.timeout_s)
            for msg in past:
                await msg.nak()
            if past:
                return len(past)

    # -- push subscriptions --------------------------------------------------------------

    def subscription_config(self, sub: SubscriptionState) -> ConsumerConfig:
        """The JetStream consumer that carries a push subscription."""
        spec = {
            "subscription_id": sub.subscription_id,
            "domain_id": sub.domain_id,
            "patterns": list(sub.patterns),
            "created_at": sub.created_at,
            "max_attempts": sub.max_attempts,
            "start": sub.delivered_sequence,
        }
        return ConsumerConfig(
            durable_name=durable_name(SUBSCRIPTION, sub.subscription_id),
            description=json.dumps(spec),
            filter_subject=subject_filter(self.prefix, sub.patterns),
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=sub.delivered_sequence + 1,
            ack_policy=AckPolicy.EXPLICIT,
            # One event outstanding across every instance: delivery stays in order, and
            # a retry waiting out its backoff holds the next events back.
            max_ack_pending=1,
            # One delivery beyond the last attempt: if the instance making the last
            # attempt dies, another still dead-letters the event.
            max_deliver=sub.max_attempts + 1,
            # Longer than a resolve plus a DeliverEvent call: JetStream hands the event
            # to another instance only when the one delivering it is gone.
            ack_wait=2 * self.settings.push_timeout_s + 5,
        )

    def subscription_state(self, info: ConsumerInfo) -> SubscriptionState | None:
        """The subscription a consumer carries, its position and its stored counters
        as this instance last read them."""
        spec = _description(info)
        if "subscription_id" not in spec:
            return None
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        counts = self.counts.base(info.name)
        return SubscriptionState(
            subscription_id=spec["subscription_id"],
            domain_id=spec["domain_id"],
            patterns=tuple(spec["patterns"]),
            created_at=float(spec["created_at"]),
            max_attempts=int(spec["max_attempts"]),
            delivered_sequence=max(floor, int(spec.get("start", 0))),
            delivered_count=counts.get("delivered", 0),
            redelivery_count=counts.get("redeliveries", 0),
            dead_letter_count=counts.get("dead_letters", 0),
        )

    @unavailable_on_nats_errors
    async def subscription_infos(self) -> list[ConsumerInfo]:
        """The consumers of every push subscription."""
        return await self._infos(SUBSCRIPTION)

    @unavailable_on_nats_errors
    async def subscriptions(self) -> list[SubscriptionState]:
        """Every push subscription, with its counters read from the bucket."""
        subs = []
        for info in await self.subscription_infos():
            await self.load_counts(info.name)
            sub = self.subscription_state(info)
            if sub is not None:
                subs.append(sub)
        return subs

    @unavailable_on_nats_errors
    async def insert_subscription(self, sub: SubscriptionState) -> None:
        """Creates the subscription's consumer."""
        await self.js.add_consumer(self.stream, self.subscription_config(sub))

    @unavailable_on_nats_errors
    async def delete_subscription(self, subscription_id: str) -> None:
        """Deletes the subscription's consumer and counters (its dead letters stay)."""
        name = durable_name(SUBSCRIPTION, subscription_id)
        with contextlib.suppress(JsNotFoundError):
            await self.js.delete_consumer(self.stream, name)
        await self.counts.delete(name)

    # -- counters ------------------------------------------------------------------------

    async def load_counts(self, key: str) -> dict[str, int]:
        """The counts stored under `key`, taken as this instance's base."""
        return await self.counts.load(key)

    @unavailable_on_nats_errors
    async def take_counts(self, sub: SubscriptionState) -> None:
        """Adds to `sub` what other instances stored since this one last looked."""
        key = durable_name(SUBSCRIPTION, sub.subscription_id)
        async with self._counting:
            before = self.counts.base(key)
            stored = await self.counts.load(key)
            _apply(sub, {k: v - before.get(k, 0) for k, v in stored.items()})

    @unavailable_on_nats_errors
    async def counters(self) -> dict[str, int]:
        """Counters of the whole bus (delivered_total)."""
        return {"delivered_total": (await self.load_counts("bus")).get("delivered", 0)}

    @unavailable_on_nats_errors
    async def flush(self, subs: Sequence[SubscriptionState], delivered_total: int) -> None:
        """Adds the subscriptions' and the bus's new counts to the bucket. The objects
        also take what other instances added (counts made while this ran are kept)."""
        async with self._counting:
            for sub in subs:
                sent = _counts(sub)
                key = durable_name(SUBSCRIPTION, sub.subscription_id)
                total = await self.counts.add(key, sent)
                _apply(sub, {k: total.get(k, 0) - v for k, v in sent.items()})
            total = await self.counts.add("bus", {"delivered": delivered_total})
            self._bus_gained += total.get("delivered", 0) - delivered_total

    def take_bus_gain(self) -> int:
        """What other instances added to the bus's delivered total, since last taken."""
        gained, self._bus_gained = self._bus_gained, 0
        return gained

    # -- dead letters (the dead-letter stream) --------------------------------------------

    @unavailable_on_nats_errors
    async def add_dead_letter(self, record: DeadLetterRecord) -> None:
        """Stores a dead letter, or replaces it (same id) after a failed redelivery."""
        await self.dead.add(record)

    @unavailable_on_nats_errors
    async def dead_letter(self, dead_letter_id: str) -> DeadLetterRecord | None:
        """One dead letter, or None."""
        return await self.dead.get(dead_letter_id)

    @unavailable_on_nats_errors
    async def dead_letters(
        self,
        *,
        subscription_id: str = "",
        before: tuple[float, str] | None = None,
        limit: int = 50,
        redelivering: bool | None = None,
    ) -> list[DeadLetterRecord]:
        """Dead letters newest first, after the keyset position `before`."""
        return await self.dead.list(
            subscription_id=subscription_id, before=before, limit=limit, redelivering=redelivering
        )

    @unavailable_on_nats_errors
    async def count_dead_letters(self) -> int:
        """How many dead letters are held."""
        return await self.dead.count()

    @unavailable_on_nats_errors
    async def remove_dead_letter(self, dead_letter_id: str) -> None:
        """Deletes a dead letter (it was redelivered)."""
        await self.dead.remove(dead_letter_id)


_COUNTED = {
    "delivered": "delivered_count",
    "redeliveries": "redelivery_count",
    "dead_letters": "dead_letter_count",
}


def _counts(sub: SubscriptionState) -> dict[str, int]:
    return {key: getattr(sub, field) for key, field in _COUNTED.items()}


def _apply(sub: SubscriptionState, gains: dict[str, int]) -> None:
    for key, field in _COUNTED.items():
        setattr(sub, field, getattr(sub, field) + gains.get(key, 0))


def _description(info: ConsumerInfo) -> dict[str, Any]:
    try:
        spec = json.loads(info.config.description or "{}")
    except ValueError:
        return {}
    return spec if isinstance(spec, dict) else {}


def event_of(msg: Msg) -> event_pb2.Event:
    """The event a stream message carries, with its stream sequence."""
    event = event_pb2.Event()
    event.ParseFromString(msg.data)
    event.sequence = msg.metadata.sequence.stream
    return event
