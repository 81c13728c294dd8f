"""A domain on the event bus: its outbox of published events, the relay that sends them,
and its push subscriptions.

`ctx.publish` writes the event to the domain's outbox table (`sdk_outbox`) and returns;
the relay sends pending events with `PublishBatch` in order (through
`services.common.bus_client.EventBusPublisher`), deletes them once the bus has
stored them, and backs off while the bus is down. Events keep their ids through retries,
so a re-send after a crash is a duplicate the bus recognizes.

At start the domain creates one push subscription per declared pattern, with an id derived
from the domain and the pattern (`<domain>.<sha256(pattern)[:12]>`), so a restart finds the
same subscriptions instead of adding new ones; the bus then calls the domain's
DeliverEvent.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import struct_pb2

from grace.eventbus.v1 import eventbus_pb2, eventbus_pb2_grpc
from services.common.bus_client import EventBusPublisher
from services.common.errors import InvalidArgument
from services.common.outbox import Outbox, OutboxRelay, outbox_table
from services.common.patterns import EVENT_TYPE_PATTERN
from services.common.storage import Database
from services.sdk.store import metadata

log = logging.getLogger(__name__)

MAX_EVENT_TYPE_LENGTH = 256
CALL_TIMEOUT_S = 10.0

outbox_events = outbox_table(metadata, "sdk")


def subscription_id(domain_id: str, pattern: str) -> str:
    """The id of a domain's push subscription to `pattern` (stable across restarts)."""
    digest = hashlib.sha256(pattern.encode()).hexdigest()[:12]
    return f"{domain_id[:100]}.{digest}"


class OutboxSink:
    """`ctx.publish`'s destination: the domain's outbox, relayed to the bus.

    Args:
        db: The domain's database.
        domain_id: Source of every event.
        wake: Called after an event is stored (wakes the relay).
    """

    def __init__(self, db: Database, domain_id: str, wake: Callable[[], None]) -> None:
        self.db = db
        self.domain_id = domain_id
        self.outbox = Outbox(db, outbox_events, domain_id)
        self._wake = wake

    async def publish(
        self,
        event_type: str,
        data: Mapping[str, Any],
        *,
        event_id: str,
        subject: str,
        traceparent: str,
    ) -> None:
        if len(event_type) > MAX_EVENT_TYPE_LENGTH or not EVENT_TYPE_PATTERN.fullmatch(event_type):
            raise InvalidArgument(
                "event_type",
                f"must be 1-{MAX_EVENT_TYPE_LENGTH} letters, digits, '_', '-', '.', ':'",
            )
        payload = struct_pb2.Struct()
        payload.update(dict(data))  # fails here, not in the relay, when data is not JSON
        async with self.db.transaction() as conn:
            await conn.execute(
                outbox_events.insert().values(
                    event_id=event_id,
                    event_type=event_type,
                    source_domain=self.domain_id,
                    subject=subject,
                    data=dict(data),
                    traceparent=traceparent,
                    created_at=time.time(),
                )
            )
        self._wake()


class Subscriptions:
    """Creates a domain's push subscriptions, retrying while the bus is down.

    Args:
        channel: Channel to the bus.
        domain_id: The subscribing domain.
        patterns: The patterns of its handlers.
        backoff_initial_s: First wait after a failure.
        backoff_max_s: Longest wait between attempts.
        sleep: Injectable sleep for tests.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        domain_id: str,
        patterns: Sequence[str],
        *,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._stub = eventbus_pb2_grpc.EventBusServiceStub(channel)
        self.domain_id = domain_id
        self.by_id = {subscription_id(domain_id, p): p for p in patterns}
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._sleep = sleep
        self.created = asyncio.Event()
        self.failures = 0

    def pattern_of(self, sub_id: str) -> str | None:
        """The pattern of one of this domain's subscriptions, or None."""
        return self.by_id.get(sub_id)

    async def run(self) -> None:
        """Creates every subscription (idempotently), then returns."""
        backoff = self.backoff_initial_s
        pending = dict(self.by_id)
        while pending:
            for sub_id, pattern in list(pending.items()):
                request = eventbus_pb2.CreateSubscriptionRequest(
                    domain_id=self.domain_id, pattern=pattern, subscription_id=sub_id
                )
                try:
                    response = await self._stub.CreateSubscription(request, timeout=CALL_TIMEOUT_S)
                except grpc.aio.AioRpcError as exc:
                    self.failures += 1
                    log.warning(
                        "subscribing to %s failed (%s: %s); retrying in %.1fs",
                        pattern,
                        exc.code().name,
                        exc.details(),
                        backoff,
                    )
                    break
                del pending[sub_id]
                log.info(
                    "%s subscription %s to %s",
                    "created" if response.created else "kept",
                    sub_id,
                    pattern,
                )
            if pending:
                await self._sleep(backoff)
                backoff = min(self.backoff_max_s, backoff * 2)
        self.created.set()


def relay(db: Database, domain_id: str, publisher: EventBusPublisher) -> OutboxRelay:
    """The relay from the domain's outbox to the bus."""
    return OutboxRelay(Outbox(db, outbox_events, domain_id), publisher)
