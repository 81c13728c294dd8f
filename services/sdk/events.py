"""A domain on the event bus: its outbox of published events, the relay that sends them,
and its push subscriptions.

`ctx.publish` writes the event to the domain's outbox table (`sdk_<domain>_outbox`, its
own even when domains share a database) and returns;
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

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf import struct_pb2
from sqlalchemy import Table

from services.common.bus_client import EventBusPublisher
from services.common.errors import InvalidArgument
from services.common.outbox import Outbox, OutboxRelay
from services.common.patterns import EVENT_TYPE_PATTERN
from services.common.storage import Database
from services.common.subscriptions import Subscriptions, subscription_id

log = logging.getLogger(__name__)

MAX_EVENT_TYPE_LENGTH = 256

__all__ = ["OutboxSink", "Subscriptions", "relay", "subscription_id"]


class OutboxSink:
    """`ctx.publish`'s destination: the domain's outbox, relayed to the bus.

    Args:
        db: The domain's database.
        domain_id: Source of every event.
        table: The domain's outbox table.
        wake: Called after an event is stored (wakes the relay).
    """

    def __init__(
        self, db: Database, domain_id: str, table: Table, wake: Callable[[], None]
    ) -> None:
        self.db = db
        self.domain_id = domain_id
        self.table = table
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
                self.table.insert().values(
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


def relay(db: Database, domain_id: str, table: Table, publisher: EventBusPublisher) -> OutboxRelay:
    """The relay from the domain's outbox table to the bus."""
    return OutboxRelay(Outbox(db, table, domain_id), publisher)
