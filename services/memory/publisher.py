"""Where the shared memory's announcements go: the one factory the server calls.

The outbox relay hands pending events to the `Publisher` this factory returns. Until the
event bus client (`services.common.bus_client.EventBusPublisher`) is part of this build,
the factory returns `BusClientMissing`, which refuses every batch: announcements then stay
durable in the outbox (nothing is lost, writes still succeed) and go out once the factory
returns the real client.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from services.common.outbox import OutboxEvent, Publisher
from services.memory.config import MemoryConfig

log = logging.getLogger(__name__)


class BusClientMissing:
    """A publisher that keeps events in the outbox because no bus client is built in."""

    def __init__(self, address: str) -> None:
        self.address = address

    async def publish(self, events: Sequence[OutboxEvent]) -> None:
        raise ConnectionError(
            f"no event bus client in this build; {len(events)} announcement(s) for "
            f"{self.address} stay in the outbox"
        )


def eventbus_publisher(config: MemoryConfig) -> Publisher:
    """The production publisher: the event bus at `config.eventbus_address`."""
    log.warning("memory: event bus client unavailable; announcements wait in the outbox")
    return BusClientMissing(config.eventbus_address)
