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
  key-value bucket `<stream>_BUS` with compare-and-set, so instances add up.
- Dead letters are messages in the stream `<stream>_DEAD` on `<prefix>_dead.<id>`: the
  event as payload, the record as a JSON header. A record changed by a redelivery is
  published again and its old message deleted.

This class has the shape of `EventStore`'s state methods, so `EventBus` and
`PushDelivery` use either (see `store.BusState`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncGenerator, Callable, Coroutine, Sequence
from dataclasses import asdict
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
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.errors import NotFoundError as JsNotFoundError
from nats.js.kv import KeyValue

from grace.eventbus.v1 import event_pb2
from services.common.errors import Unavailable
from services.eventbus.jetstream import (
    JetStreamLog,
    stream_sequence,
    subject_filter,
    subject_for,
)
from services.eventbus.model import BusSettings, ConsumerState, DeadLetterRecord, SubscriptionState

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

CONSUMER = "c-"
SUBSCRIPTION = "p-"
DEAD_LETTER = "Grace-Dead-Letter"
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
        self.dead_stream = f"{options.stream}_DEAD"
        self.dead_prefix = f"{options.subject_prefix}_dead"
        self.bucket = f"{options.stream}_BUS"
        self._kv: KeyValue | None = None
        # Counter values this instance has added to the bucket, per key: what is added
        # next is the difference (other instances add theirs).
        self._based: dict[str, dict[str, int]] = {}
        self._bus_gained = 0
        # Reading and adding counts both move `_based`: one at a time, or a count read
        # while another is being added would be counted twice or lost.
        self._counting = asyncio.Lock()

    @property
    def js(self) -> JetStreamContext:
        return self.log.js

    @property
    def kv(self) -> KeyValue:
        if self._kv is None:
            raise Unavailable("event bus is not open")
        return self._kv

    async def open(self) -> None:
        """Connects (through the log) and creates the dead-letter stream and the bucket."""
        await self.log.open()
        js = self.js
        config = StreamConfig(
            name=self.dead_stream,
            subjects=[f"{self.dead_prefix}.>"],
            storage=StorageType.FILE,
            num_replicas=self.log.options.replicas,
        )
        try:
            await js.stream_info(self.dead_stream)
        except JsNotFoundError:
            with contextlib.suppress(BadRequestError):  # another instance made it
                await js.add_stream(config)
        try:
            self._kv = await js.key_value(self.bucket)
        except (JsNotFoundError, nats.js.errors.BucketNotFoundError):
            self._kv = await js.create_key_value(
                bucket=self.bucket, history=1, replicas=self.log.options.replicas
            )

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
        counts = self._based.get(info.name, {})
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
        with contextlib.suppress(KeyNotFoundError):
            await self.kv.delete(name)
        self._based.pop(name, None)

    # -- counters ------------------------------------------------------------------------

    async def load_counts(self, key: str) -> dict[str, int]:
        """The counts stored under `key`, taken as this instance's base."""
        try:
            entry = await self.kv.get(key)
            counts = {k: int(v) for k, v in json.loads(entry.value or b"{}").items()}
        except KeyNotFoundError:
            counts = {}
        self._based[key] = counts
        return counts

    async def _add_counts(self, key: str, counts: dict[str, int]) -> dict[str, int]:
        """Adds what changed since this instance last added or read `key`; returns the
        stored totals (which include other instances' additions)."""
        base = self._based.get(key, {})
        delta = {k: v - base.get(k, 0) for k, v in counts.items()}
        while True:
            try:
                entry = await self.kv.get(key)
                stored = {k: int(v) for k, v in json.loads(entry.value or b"{}").items()}
                revision: int | None = entry.revision
            except KeyNotFoundError:
                stored, revision = {}, None
            total = {k: stored.get(k, 0) + delta.get(k, 0) for k in {*stored, *delta}}
            value = json.dumps(total).encode()
            try:
                if revision is None:
                    await self.kv.create(key, value)
                else:
                    await self.kv.update(key, value, last=revision)
            except (KeyWrongLastSequenceError, BadRequestError):
                continue  # another instance added meanwhile: add to its total
            self._based[key] = total
            return total

    @unavailable_on_nats_errors
    async def take_counts(self, sub: SubscriptionState) -> None:
        """Adds to `sub` what other instances stored since this one last looked."""
        key = durable_name(SUBSCRIPTION, sub.subscription_id)
        async with self._counting:
            before = self._based.get(key, {})
            stored = await self.load_counts(key)
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
                total = await self._add_counts(key, sent)
                _apply(sub, {k: total.get(k, 0) - v for k, v in sent.items()})
            total = await self._add_counts("bus", {"delivered": delivered_total})
            self._bus_gained += total.get("delivered", 0) - delivered_total

    def take_bus_gain(self) -> int:
        """What other instances added to the bus's delivered total, since last taken."""
        gained, self._bus_gained = self._bus_gained, 0
        return gained

    # -- dead letters --------------------------------------------------------------------

    async def _dead(
        self, subscription_id: str = ""
    ) -> AsyncGenerator[tuple[int, DeadLetterRecord]]:
        subject = (
            subject_for(self.dead_prefix, subscription_id)
            if subscription_id
            else f"{self.dead_prefix}.>"
        )
        sub = await self.js.pull_subscribe(
            subject,
            stream=self.dead_stream,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=60.0,
                mem_storage=True,
            ),
        )
        try:
            pending = (await sub.consumer_info()).num_pending or 0
            while pending > 0:
                try:
                    batch = await sub.fetch(
                        min(pending, _FETCH), timeout=self.log.options.timeout_s
                    )
                except (TimeoutError, nats.errors.TimeoutError):
                    return
                for msg in batch:
                    pending -= 1
                    record = _dead_letter(msg)
                    if record is not None and (
                        not subscription_id or record.subscription_id == subscription_id
                    ):
                        yield msg.metadata.sequence.stream, record
        finally:
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()

    async def _find(self, dead_letter_id: str) -> tuple[int, DeadLetterRecord] | None:
        async with contextlib.aclosing(self._dead()) as records:
            async for seq, record in records:
                if record.dead_letter_id == dead_letter_id:
                    return seq, record
        return None

    @unavailable_on_nats_errors
    async def add_dead_letter(self, record: DeadLetterRecord) -> None:
        """Stores a dead letter, or replaces it (same id) after a failed redelivery."""
        meta = {k: v for k, v in asdict(record).items() if k != "event"}
        old = await self._find(record.dead_letter_id)
        await self.js.publish(
            subject_for(self.dead_prefix, record.subscription_id),
            record.event,
            stream=self.dead_stream,
            headers={DEAD_LETTER: json.dumps(meta)},
        )
        if old is not None:
            with contextlib.suppress(JsNotFoundError):
                await self.js.delete_msg(self.dead_stream, old[0])

    @unavailable_on_nats_errors
    async def dead_letter(self, dead_letter_id: str) -> DeadLetterRecord | None:
        """One dead letter, or None."""
        found = await self._find(dead_letter_id)
        return None if found is None else found[1]

    @unavailable_on_nats_errors
    async def dead_letters(
        self,
        *,
        subscription_id: str = "",
        before: tuple[float, str] | None = None,
        limit: int = 50,
        redelivering: bool | None = None,
    ) -> list[DeadLetterRecord]:
        """Dead letters newest first, after the keyset position `before`. Reads every
        dead letter (of the subscription): dead letters are few, and cleared."""
        records = []
        async with contextlib.aclosing(self._dead(subscription_id)) as found:
            async for _, record in found:
                if redelivering is not None and record.redelivering != redelivering:
                    continue
                if before is not None and (record.failed_at, record.dead_letter_id) >= before:
                    continue
                records.append(record)
        records.sort(key=lambda r: (r.failed_at, r.dead_letter_id), reverse=True)
        return records[:limit]

    @unavailable_on_nats_errors
    async def count_dead_letters(self) -> int:
        """How many dead letters are held."""
        return int((await self.js.stream_info(self.dead_stream)).state.messages)

    @unavailable_on_nats_errors
    async def remove_dead_letter(self, dead_letter_id: str) -> None:
        """Deletes a dead letter (it was redelivered)."""
        found = await self._find(dead_letter_id)
        if found is not None:
            with contextlib.suppress(JsNotFoundError):
                await self.js.delete_msg(self.dead_stream, found[0])


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


def _dead_letter(msg: Msg) -> DeadLetterRecord | None:
    try:
        meta = json.loads((msg.headers or {}).get(DEAD_LETTER, ""))
        return DeadLetterRecord(event=msg.data, **meta)
    except (TypeError, ValueError):
        log.warning("dead-letter message %d is not a record", msg.metadata.sequence.stream)
        return None


def event_of(msg: Msg) -> event_pb2.Event:
    """The event a stream message carries, with its stream sequence."""
    event = event_pb2.Event()
    event.ParseFromString(msg.data)
    event.sequence = msg.metadata.sequence.stream
    return event
