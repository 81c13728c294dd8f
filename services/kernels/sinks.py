"""Where the kernels' outboxes drain: the event bus and the immutable log.

Each kernel writes events (and governance its log entries) to a transactional outbox;
an `OutboxRelay` hands them to a `Publisher`. The factories below return the publisher for
a peer. Until this build carries the event bus client (`services.common.bus_client`) and
the immutable log contract, they return `PeerClientMissing`, which refuses every batch:
entries then stay durable in the outbox, writes still succeed, and they go out once the
factory returns the real client (one line each at merge).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from services.common.outbox import OutboxEvent, Publisher

log = logging.getLogger(__name__)


class PeerClientMissing:
    """A publisher that keeps entries in the outbox because no client for the peer is
    built in.

    Args:
        peer: Peer name, for messages.
        address: Peer address, for messages.
    """

    def __init__(self, peer: str, address: str) -> None:
        self.peer = peer
        self.address = address

    async def publish(self, events: Sequence[OutboxEvent]) -> None:
        raise ConnectionError(
            f"no {self.peer} client in this build; {len(events)} entr(y/ies) for "
            f"{self.address} stay in the outbox"
        )


def eventbus_publisher(address: str) -> Publisher:
    """The publisher of events to the event bus at `address`."""
    log.warning("event bus client unavailable in this build; events wait in the outbox")
    return PeerClientMissing("event bus", address)


def immutable_log_publisher(address: str) -> Publisher:
    """The publisher of entries to the immutable log at `address`."""
    log.warning("immutable log client unavailable in this build; entries wait in the outbox")
    return PeerClientMissing("immutable log", address)
