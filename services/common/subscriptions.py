"""Push subscriptions a service keeps on the event bus, created idempotently at start.

A subscription's id is derived from the subscribing domain and the pattern
(`<domain>.<sha256(pattern)[:12]>`), so a restart finds the same subscriptions instead of
adding new ones; the bus then calls the domain's `DeliverEvent`. While the bus is down,
creation is retried with backoff. Used by SDK domains and by the kernels.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence

import grpc

from grace.eventbus.v1 import eventbus_pb2, eventbus_pb2_grpc

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 10.0


def subscription_id(domain_id: str, pattern: str) -> str:
    """The id of a domain's push subscription to `pattern` (stable across restarts)."""
    digest = hashlib.sha256(pattern.encode()).hexdigest()[:12]
    return f"{domain_id[:100]}.{digest}"


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
