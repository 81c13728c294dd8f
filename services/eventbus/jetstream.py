"""The event log on NATS JetStream: one stream holds every event, the stream sequence is
the bus sequence.

Layout. Each event is one message on `<prefix>.<event_type>` (an empty dot-separated part
of the type becomes `_`, since NATS subjects cannot have empty tokens). The payload is the
serialized `Event` without its sequence (the stream assigns it; readers set it from the
message). The header `Grace-Published-At` carries the bus's publish time, so history by
time and retention by age use the same clock as the built-in log. Publishers' event ids go
in `Nats-Msg-Id` (`<len(source)>:<source>:<id>`): JetStream drops a repeat within the
stream's duplicate window and answers with the original sequence. Ids the bus generated
need no header: they never repeat.

Appending. A batch is one write of HPUB frames, each with a reply subject
`<inbox>.<token>`; one subscription on `<inbox>.*` matches JetStream's acknowledgements to
their batch, which is answered when the last arrives (see `append`).

Reading. Catch-up reads, history and start-by-time use short-lived ephemeral pull
consumers from a start sequence with a subject filter derived from the patterns (see
`subject_filter`); the bus re-checks every event with the exact matcher. Live readers are
fed by one ordered push consumer per process on `<prefix>.>` that starts at the head the
process saw when it opened: every bus instance sees every event, whichever instance (or
other producer) appended it, in stream order. Events this instance appended are handed
on as the objects it published, not parsed again from the tail's copies.

Consumers, push subscriptions and dead letters: `jetstream_state` and `jetstream_push`.

Retention. Age and count are stream limits (`max_age`, `max_msgs`), enforced by the
server; the bus's retention pass also purges by its own clock, as the built-in log does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import ssl
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from grace.eventbus.v1 import event_pb2
from services.common.errors import Unavailable
from services.common.patterns import literal_prefix
from services.eventbus.eventlog import Appended, Clock, Reader, fan_out, wanted
from services.eventbus.index import PatternIndex
from services.eventbus.model import BusSettings, Start, StartSpec
from services.eventbus.store import EventRow, LogFilter

__all__ = ["JetStreamLog", "JetStreamOptions", "subject_filter", "subject_for"]

log = logging.getLogger(__name__)

PUBLISHED_AT = "Grace-Published-At"
PUBLISHED_AT_B = PUBLISHED_AT.encode()
_FETCH = 256
# Most appended events kept for the tail to hand on unparsed (the tail normally takes each
# within milliseconds; past this, it parses its copies).
_LOCAL_LIMIT = 100_000


@dataclass(frozen=True)
class JetStreamOptions:
    """Where the stream lives and how it is named and kept.

    Attributes:
        servers: NATS URLs (`nats://host:4222` or `tls://...`); the client fails over
            between them and reconnects on its own.
        stream: The stream's name.
        subject_prefix: Subjects are `<prefix>.<event_type>`.
        creds_file: A NATS credentials file (user JWT and NKey seed); empty for none.
            User and password may also be given in the URL.
        tls_ca: CA bundle that verifies the server; empty uses the system's.
        tls_cert: Client certificate (mutual TLS), with `tls_key`.
        tls_key: The client certificate's key.
        tls: Use TLS even when the URLs say `nats://`.
        duplicate_window_s: How long JetStream remembers event ids for duplicate
            suppression.
        replicas: Stream replicas (1 on a single server; 3 on a cluster).
        timeout_s: Deadline of one JetStream request (publish, read, info).
    """

    servers: tuple[str, ...]
    stream: str = "GRACE_EVENTS"
    subject_prefix: str = "grace.events"
    creds_file: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    tls: bool = False
    duplicate_window_s: float = 120.0
    replicas: int = 1
    timeout_s: float = 10.0

    def tls_context(self) -> ssl.SSLContext | None:
        """The client TLS context, or None when TLS is not asked for."""
        if not (self.tls or self.tls_ca or self.tls_cert):
            return None
        context = ssl.create_default_context(cafile=self.tls_ca or None)
        if self.tls_cert:
            context.load_cert_chain(self.tls_cert, self.tls_key or None)
        return context


def subject_for(prefix: str, event_type: str) -> str:
    """The subject an event type is stored under."""
    return f"{prefix}.{'.'.join(part or '_' for part in event_type.split('.'))}"


def _stem(pattern: str) -> list[str]:
    """The subject tokens every type matching `pattern` starts with, such that at least
    one more token follows."""
    if "*" not in pattern:
        return [part or "_" for part in pattern.split(".")][:-1]
    # Only the parts before the last dot of the literal prefix are whole tokens.
    return [part or "_" for part in literal_prefix(pattern).split(".")][:-1]


def subject_filter(prefix: str, patterns: Sequence[str]) -> str:
    """The narrowest single NATS subject filter covering every pattern.

    NATS wildcards match whole tokens only, while a bus `*` matches any run of characters,
    dots included. So: a pattern without `*` is its exact subject; `ml.*` or `ml.pre*`
    become `<prefix>.ml.>`; a pattern whose `*` comes before its first dot (`*.failed`,
    `ml*`) covers every subject. Several patterns share the tokens they have in common.
    """
    if not patterns or "*" in patterns:
        return f"{prefix}.>"
    if len(patterns) == 1 and "*" not in patterns[0]:
        return subject_for(prefix, patterns[0])
    stems = [_stem(p) for p in patterns]
    common: list[str] = []
    for parts in zip(*stems, strict=False):
        if any(part != parts[0] for part in parts):
            break
        common.append(parts[0])
    return ".".join([prefix, *common, ">"])


def _msg_id(event: event_pb2.Event) -> str:
    source = event.source_domain
    return f"{len(source)}:{source}:{event.id}"


def _msg_id_header(event: event_pb2.Event) -> bytes:
    """The `Nats-Msg-Id` header line and the end of the headers (ids and sources are of
    a validated alphabet: nothing to escape)."""
    return b"Nats-Msg-Id: %s\r\n\r\n" % _msg_id(event).encode()


def stream_sequence(reply: str) -> int:
    """The stream sequence of a message delivered by a consumer, read from its reply
    subject (`$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>...`, or with a domain
    and account hash after `ACK`), without building the client's metadata objects."""
    tokens = reply.split(".")
    return int(tokens[5] if len(tokens) == 9 else tokens[7])


# JetStream's answer to a publish: {"stream":"S", "seq":42}, with "duplicate": true for a
# repeat, or {"error":{...}}. Two byte searches instead of a JSON document per event.
_ACK_SEQUENCE = re.compile(rb'"seq":\s*(\d+)')
_ACK_DUPLICATE = re.compile(rb'"duplicate":\s*true')


class _ReadCut(Exception):
    """A read of the stream stopped before the end of its range."""


class _AckBatch:
    """The acknowledgements one append waits for, as they arrive."""

    __slots__ = ("done", "duplicate", "events", "failure", "left", "tokens")

    def __init__(self, events: Sequence[event_pb2.Event]) -> None:
        self.events = events
        self.duplicate: list[bool] = [False] * len(events)
        self.left = len(events)
        self.failure = b""
        self.tokens: list[int] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not events:
            self.done.set_result(None)

    def answer(self, index: int, duplicate: bool) -> None:
        self.duplicate[index] = duplicate
        self.left -= 1
        if not self.left and not self.done.done():
            self.done.set_result(None)

    def fail(self, index: int, data: bytes) -> None:
        self.failure = self.failure or data[:200] or b"(no answer)"
        self.answer(index, False)

    def forget(self, awaiting: dict[int, tuple[_AckBatch, int]]) -> None:
        for token in self.tokens:
            awaiting.pop(token, None)


def _published_at(headers: dict[str, str] | None) -> float:
    try:
        return float((headers or {}).get(PUBLISHED_AT, "0"))
    except ValueError:
        return 0.0


def _event(sequence: int, data: bytes) -> event_pb2.Event:
    event = event_pb2.Event()
    event.ParseFromString(data)
    event.sequence = sequence
    return event


class JetStreamLog:
    """The bus's event log in a JetStream stream (implements `eventlog.Log`).

    Args:
        options: Servers, stream and security.
        settings: Retention limits (become stream limits).
        clock: Epoch seconds; injectable for tests.
    """

    def __init__(
        self, options: JetStreamOptions, settings: BusSettings, clock: Clock = time.time
    ) -> None:
        self.options = options
        self.settings = settings
        self.clock = clock
        self.head = 0
        self.first = 1
        self.duplicates = 0
        self.index: PatternIndex[Reader] = PatternIndex()
        self.readers: set[Reader] = set()
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._tail: JetStreamContext.PushSubscription | None = None
        self._closing = False
        self._arrived: list[event_pb2.Event] = []
        self._arrived_sizes: list[int] = []  # their stored bytes, in the same order
        # Publishing: acknowledgements come to `<inbox>.<token>`; each token's batch and
        # place in it wait in `_awaiting`.
        self._ack_prefix = b""
        self._ack_cut = 0
        self._ack_sub: Subscription | None = None
        self._awaiting: dict[int, tuple[_AckBatch, int]] = {}
        self._tokens = itertools.count(1)
        self._subjects: dict[str, bytes] = {}
        # Events this instance appended that the tail has not delivered yet (by sequence),
        # and the last sequence the tail delivered.
        self._local: dict[int, event_pb2.Event] = {}
        self._tail_seen = 0
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count(1)

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context; Unavailable before `open` or after `close`."""
        if self._js is None or self._closing:
            raise Unavailable("event bus is shutting down")
        return self._js

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Connects, creates or updates the stream, loads bounds, starts the live tail.
        Opening an open log does nothing (the JetStream state opens it first)."""
        if self._nc is not None:
            return
        opts = self.options
        try:
            self._nc = await nats.connect(
                list(opts.servers),
                name="grace-eventbus",
                user_credentials=opts.creds_file or None,
                tls=opts.tls_context(),
                connect_timeout=opts.timeout_s,
                max_reconnect_attempts=-1,
                allow_reconnect=True,
            )
        except (NatsError, OSError) as exc:
            raise Unavailable(f"NATS at {', '.join(opts.servers)} is unreachable: {exc}") from exc
        self._js = self._nc.jetstream(timeout=opts.timeout_s)
        await self._ensure_stream()
        await self._refresh_bounds()
        inbox = self._nc.new_inbox()
        self._ack_prefix = f"{inbox}.".encode()
        self._ack_cut = len(self._ack_prefix)
        self._ack_sub = await self._nc.subscribe(f"{inbox}.*", cb=self._on_ack)
        self._tail_seen = self.head
        self._tail = await self._js.subscribe(
            f"{opts.subject_prefix}.>",
            stream=opts.stream,
            cb=self._on_tail,
            ordered_consumer=True,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self.head + 1,
            ),
            pending_msgs_limit=1_000_000,
        )
        log.info(
            "event log on JetStream stream %s: sequences %d..%d", opts.stream, self.first, self.head
        )

    async def _ensure_stream(self) -> None:
        opts, settings = self.options, self.settings
        window = opts.duplicate_window_s
        if settings.retention_max_age_s:  # JetStream requires window <= max age
            window = min(window, settings.retention_max_age_s)
        config = StreamConfig(
            name=opts.stream,
            subjects=[f"{opts.subject_prefix}.>"],
            storage=StorageType.FILE,
            num_replicas=opts.replicas,
            max_age=settings.retention_max_age_s or None,
            max_msgs=settings.retention_max_count or -1,
            duplicate_window=window,
        )
        jsm = self.js
        try:
            await jsm.stream_info(opts.stream)
        except NotFoundError:
            try:
                await jsm.add_stream(config)
                return
            except NatsError:
                pass  # another instance created it meanwhile: update below
        await jsm.update_stream(config)

    async def sync(self) -> None:
        """Reads the stream's bounds: other instances append too, and the server applies
        the retention limits on its own."""
        try:
            await self._refresh_bounds()
        except NatsError as exc:
            raise Unavailable(f"event log read failed: {exc!r}") from exc

    async def _refresh_bounds(self) -> None:
        state = (await self.js.stream_info(self.options.stream)).state
        self.head = max(self.head, state.last_seq)
        self.first = state.first_seq if state.messages else state.last_seq + 1

    async def close(self, drain_timeout_s: float = 5.0) -> None:
        """Stops the tail, closes the connection and ends every reader."""
        self._closing = True
        for acks, _ in list(self._awaiting.values()):
            if not acks.done.done():
                acks.done.set_exception(Unavailable("event bus is shutting down"))
        # Every step is bounded: a stop must not wait on a NATS server that went away
        # or a client that does not answer (a stop under heavy load was seen to hang).
        if self._tail is not None:
            with contextlib.suppress(NatsError, asyncio.TimeoutError):
                await asyncio.wait_for(self._tail.unsubscribe(), drain_timeout_s)
        if self._nc is not None:
            with contextlib.suppress(NatsError, asyncio.TimeoutError):
                await asyncio.wait_for(self._nc.drain(), drain_timeout_s)
            with contextlib.suppress(NatsError, asyncio.TimeoutError):
                await asyncio.wait_for(self._nc.close(), drain_timeout_s)
        for reader in list(self.readers):
            reader.close()

    def new_id(self) -> str:
        """An id for an event whose publisher gave none (a random prefix and a counter)."""
        return f"{self._id_prefix}-{next(self._ids)}"

    # -- appending -------------------------------------------------------------------

    async def append(
        self, batch: Sequence[event_pb2.Event], generated: Sequence[bool]
    ) -> list[Appended]:
        """Publishes the events in order, pipelined on one connection, and returns once
        JetStream acknowledged each: stored, or a duplicate with the original sequence.
        No acknowledgement within the timeout fails the call with Unavailable (the events
        may or may not be stored; a retry with the same ids is safe).

        The whole batch is written as one run of HPUB frames and its acknowledgements are
        awaited as one: the client's `publish_async` costs a timer, a future, a semaphore
        and a header dict per message, most of the bus's time on this path in a profile.
        """
        nc = self._connected()
        now = self.clock()
        stamp = repr(now).encode()
        # Only the headers the log needs: JetStream stores every header with the message,
        # and every reader (the tail of each instance too) parses them again.
        common = b"NATS/1.0\r\n" + PUBLISHED_AT_B + b": " + stamp + b"\r\n"
        acks = _AckBatch(batch)
        tokens = self._tokens
        awaiting = self._awaiting
        reply = self._ack_prefix
        subjects = self._subjects
        frames: list[bytes] = []
        add = frames.append
        max_payload = nc.max_payload
        for index, (event, gen) in enumerate(zip(batch, generated, strict=True)):
            token = next(tokens)
            awaiting[token] = (acks, index)
            acks.tokens.append(token)
            header = common + b"\r\n" if gen else common + _msg_id_header(event)
            payload = event.SerializeToString()
            size = len(header) + len(payload)
            if size > max_payload:
                acks.forget(awaiting)
                raise Unavailable(f"event log write failed: message of {size} bytes is too large")
            subject = subjects.get(event.event_type)
            if subject is None:
                subject = subjects[event.event_type] = subject_for(
                    self.options.subject_prefix, event.event_type
                ).encode()
            add(b"HPUB %s %s%d %d %d\r\n" % (subject, reply, token, len(header), size))
            add(header)
            add(payload)
            add(b"\r\n")
        try:
            # nats-py has no batch publish: its own publish appends each frame to this
            # buffer and asks the flusher to write; here the batch is one append.
            await nc._send_command(b"".join(frames))
            await nc._flush_pending()
            await asyncio.wait_for(asyncio.shield(acks.done), self.options.timeout_s)
        except (TimeoutError, NatsError) as exc:
            acks.forget(awaiting)
            raise Unavailable(f"event log write failed: {exc!r}") from exc
        if acks.failure:
            raise Unavailable(f"event log write failed: JetStream answered {acks.failure!r}")
        answers = []
        highest = self.head
        duplicates = 0
        for event, duplicate in zip(batch, acks.duplicate, strict=True):
            sequence = event.sequence
            duplicates += duplicate
            if sequence > highest:
                highest = sequence
            answers.append(Appended(event.id, sequence, duplicate, now))
        self.duplicates += duplicates
        self.head = highest
        return answers

    def _connected(self) -> NatsClient:
        # Not connected: fail now rather than let the client buffer the batch and send
        # it after a reconnect, long after the caller was told it failed.
        nc = self._nc
        if nc is None or self._closing or not nc.is_connected:
            raise Unavailable("event log write failed: NATS is not connected")
        return nc

    async def _on_ack(self, msg: Msg) -> None:
        entry = self._awaiting.pop(int(msg.subject[self._ack_cut :]), None)
        if entry is None:
            return  # its batch gave up waiting
        acks, index = entry
        data = msg.data
        found = _ACK_SEQUENCE.search(data)
        if found is None or b'"error"' in data:
            acks.fail(index, data)
            return
        sequence = int(found.group(1))
        duplicate = _ACK_DUPLICATE.search(data) is not None
        event = acks.events[index]
        event.sequence = sequence
        if not duplicate and sequence > self._tail_seen and len(self._local) < _LOCAL_LIMIT:
            # The ack comes before the tail's copy: the tail hands this object on
            # instead of parsing the copy.
            self._local[sequence] = event
        acks.answer(index, duplicate)

    async def _on_tail(self, msg: Msg) -> None:
        # The client hands messages over one at a time; everything that arrives in one
        # turn of the event loop is offered to the readers together, so a reader wakes
        # once per burst and streams it in one message instead of one per event.
        sequence = stream_sequence(msg.reply)
        if sequence > self.head:
            self.head = sequence
        self._tail_seen = sequence
        event = self._local.pop(sequence, None)
        self._arrived.append(event if event is not None else _event(sequence, msg.data))
        self._arrived_sizes.append(len(msg.data))
        if len(self._arrived) == 1:
            asyncio.get_running_loop().call_soon(self._fan_out_arrived)

    def _fan_out_arrived(self) -> None:
        arrived, self._arrived = self._arrived, []
        sizes, self._arrived_sizes = self._arrived_sizes, []
        fan_out(self.index, arrived, sizes)

    # -- reading ---------------------------------------------------------------------

    async def _messages(self, after: int, upto: int, subject: str) -> AsyncGenerator[Msg, None]:
        """Stored messages on `subject` with after < sequence <= upto, in order, through
        an ephemeral pull consumer that is deleted afterwards."""
        if upto <= after:
            return
        js = self.js
        sub = await js.pull_subscribe(
            subject,
            stream=self.options.stream,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=after + 1,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=60.0,
                mem_storage=True,
            ),
        )
        name = ""
        try:
            info = await sub.consumer_info()
            name = info.name
            pending = info.num_pending or 0
            while pending > 0:
                try:
                    batch = await sub.fetch(min(pending, _FETCH), timeout=self.options.timeout_s)
                except (TimeoutError, nats.errors.TimeoutError):
                    # Fewer messages than counted: purged meanwhile, or a server too busy
                    # to answer in time. Not the end of the range either way.
                    raise _ReadCut from None
                for msg in batch:
                    pending -= 1
                    if stream_sequence(msg.reply) > upto:
                        return
                    yield msg
        finally:
            with contextlib.suppress(NatsError, asyncio.TimeoutError):
                await sub.unsubscribe()
            if name:
                with contextlib.suppress(NatsError, asyncio.TimeoutError):
                    await js.delete_consumer(self.options.stream, name)

    def _filter_subject(self, log_filter: LogFilter) -> str:
        return subject_filter(self.options.subject_prefix, log_filter.patterns)

    def encode(self, events: Sequence[event_pb2.Event]) -> list[bytes]:
        """Each event serialized, sequence included (the stream's copy has none)."""
        return [event.SerializeToString() for event in events]

    async def read(
        self, after: int, limit: int, log_filter: LogFilter
    ) -> tuple[list[event_pb2.Event], int]:
        """Up to `limit` matching events after `after`, and the last sequence examined."""
        upto = self.head
        if after >= upto:
            return [], after
        found: list[event_pb2.Event] = []
        examined = 0
        scanned = upto
        last = after
        subject = self._filter_subject(log_filter)
        try:
            async with contextlib.aclosing(
                self._messages(max(after, self.first - 1), upto, subject)
            ) as messages:
                async for msg in messages:
                    event = _event(stream_sequence(msg.reply), msg.data)
                    last = event.sequence
                    examined += 1
                    if wanted(event.event_type, event.source_domain, log_filter):
                        found.append(event)
                    if examined == limit:
                        scanned = event.sequence
                        break
        except _ReadCut:
            scanned = last  # the reader asks again from here: nothing is skipped
        except NatsError as exc:
            raise Unavailable(f"event log read failed: {exc!r}") from exc
        return found, scanned

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
        """Up to `limit` stored events with after < sequence <= upto on the filter's
        subjects, from its source, published in [start_time, end_time)."""
        subject = self._filter_subject(log_filter)
        after = max(after, self.first - 1)
        rows: list[EventRow] = []

        async def collect(low: int, high: int, into: list[EventRow]) -> None:
            async with contextlib.aclosing(self._messages(low, high, subject)) as messages:
                async for msg in messages:
                    at = _published_at(msg.headers)
                    if (start_time and at < start_time) or (end_time and at >= end_time):
                        continue
                    event = event_pb2.Event()
                    event.ParseFromString(msg.data)
                    source = event.source_domain
                    if log_filter.source_domain and source != log_filter.source_domain:
                        continue
                    into.append(
                        EventRow(
                            stream_sequence(msg.reply),
                            source,
                            event.id,
                            event.event_type,
                            at,
                            msg.data,
                        )
                    )
                    if not newest_first and len(into) == limit:
                        return

        try:
            if not newest_first:
                await collect(after, upto, rows)
                return rows
            # Consumers only read forwards: walk windows down from the top.
            high = upto
            window = max(limit, _FETCH)
            while high > after and len(rows) < limit:
                low = max(after, high - window)
                part: list[EventRow] = []
                await collect(low, high, part)
                rows.extend(reversed(part))
                high = low
                window *= 2
        except _ReadCut:
            raise Unavailable("event log read failed: the stream did not answer in time") from None
        except NatsError as exc:
            raise Unavailable(f"event log read failed: {exc!r}") from exc
        return rows[:limit]

    async def _published_at_seq(self, sequence: int) -> float | None:
        try:
            msg = await self.js.get_msg(self.options.stream, sequence)
        except NotFoundError:
            return None
        return _published_at(msg.headers)

    async def sequence_at(self, when: float) -> int:
        """The first retained sequence published at or after `when` (head + 1 if none)."""
        low, high = self.first, self.head + 1
        while low < high:
            mid = (low + high) // 2
            at = await self._published_at_seq(mid)
            if at is None or at < when:
                low = mid + 1
            else:
                high = mid
        return low

    async def resolve_start(self, spec: StartSpec) -> int:
        """The cursor for a start position, against the stream's current bounds (which
        may include events other instances appended)."""
        await self.sync()
        if spec.kind is Start.ALL:
            return self.first - 1
        if spec.kind is Start.SEQUENCE:
            return max(0, min(spec.sequence, self.head + 1) - 1)
        if spec.kind is Start.TIME:
            return await self.sequence_at(spec.time) - 1
        return self.head

    # -- retention and counts ----------------------------------------------------------

    async def enforce_retention(self) -> int:
        """Purges events past the age and count limits by the bus's clock (the stream
        limits enforce the same by the server's); returns how many went."""
        await self._refresh_bounds()
        cut = self.first
        max_count = self.settings.retention_max_count
        if max_count and self.head - self.first + 1 > max_count:
            cut = self.head - max_count + 1
        if self.settings.retention_max_age_s:
            cut = max(cut, await self.sequence_at(self.clock() - self.settings.retention_max_age_s))
        if cut <= self.first:
            return 0
        before = self.first
        await self.js.purge_stream(self.options.stream, seq=cut)
        await self._refresh_bounds()
        log.info("retention purged the stream before %d", cut)
        return max(0, self.first - before)

    async def type_counts(self) -> dict[str, int]:
        """Retained events per type, counted by the stream per subject."""
        prefix = self.options.subject_prefix
        info = await self.js.stream_info(self.options.stream, subjects_filter=f"{prefix}.>")
        subjects = info.state.subjects or {}
        return {subject[len(prefix) + 1 :]: int(count) for subject, count in subjects.items()}
