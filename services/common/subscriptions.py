"""Push subscriptions a service keeps on the event bus, created idempotently at start.

A subscription's id is derived from the subscribing domain and the pattern
(`<domain>.<sha256(pattern)[:12]>`), so a restart finds the same subscriptions instead of
adding new ones; the bus then calls the domain's `DeliverEvent`. While the bus is down,
creation is retried with backoff. Used by SDK domains and by the kernels.

Components start in any order under Guardian, so a bus that is not up yet is expected: the
calls wait for the channel to connect (`wait_for_ready`), and while the bus is unreachable
or still starting one INFO line says so; only a bus still away after `patience_s`, or a
refusal of another kind, is a WARNING.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import grpc

from grace.eventbus.v1 import eventbus_pb2, eventbus_pb2_grpc
from services.common.backoff import Backoff

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 10.0
# The bus answers these while it is down or starting: worth waiting for, not worth a warning.
_NOT_UP_YET = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


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
        patience_s: How long the bus may stay away before that is worth a warning.
        call_timeout_s: Deadline of each attempt (it waits for the bus to connect).
        sleep: Injectable sleep for tests.
        clock: Injectable monotonic clock for tests.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        domain_id: str,
        patterns: Sequence[str],
        *,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        patience_s: float = 60.0,
        call_timeout_s: float = CALL_TIMEOUT_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stub = eventbus_pb2_grpc.EventBusServiceStub(channel)
        self.domain_id = domain_id
        self.by_id = {subscription_id(domain_id, p): p for p in patterns}
        self.backoff = Backoff(backoff_initial_s, max_s=backoff_max_s)
        self.patience_s = patience_s
        self.call_timeout_s = call_timeout_s
        self._sleep = sleep
        self._clock = clock
        self.created = asyncio.Event()
        self.failures = 0

    def pattern_of(self, sub_id: str) -> str | None:
        """The pattern of one of this domain's subscriptions, or None."""
        return self.by_id.get(sub_id)

    async def run(self) -> None:
        """Creates every subscription (idempotently), then returns."""
        failed_rounds = 0
        pending = dict(self.by_id)
        started = self._clock()
        said_waiting = warned_late = False
        while pending:
            # What this round waits if it leaves a subscription pending (its logs say so).
            backoff = self.backoff.delay(failed_rounds + 1)
            for sub_id, pattern in list(pending.items()):
                request = eventbus_pb2.CreateSubscriptionRequest(
                    domain_id=self.domain_id, pattern=pattern, subscription_id=sub_id
                )
                try:
                    response = await self._stub.CreateSubscription(
                        request, timeout=self.call_timeout_s, wait_for_ready=True
                    )
                except grpc.aio.AioRpcError as exc:
                    self.failures += 1
                    waited = self._clock() - started
                    if exc.code() not in _NOT_UP_YET:
                        log.warning(
                            "subscribing to %s failed (%s: %s); retrying in %.1fs",
                            pattern,
                            exc.code().name,
                            exc.details(),
                            backoff,
                        )
                    elif waited >= self.patience_s and not warned_late:
                        warned_late = True
                        log.warning(
                            "the event bus is still unavailable after %.0fs (%s); %s keeps "
                            "waiting to subscribe to %s",
                            waited,
                            exc.details(),
                            self.domain_id,
                            ", ".join(pending.values()),
                        )
                    elif not said_waiting:
                        said_waiting = True
                        log.info(
                            "waiting for the event bus to subscribe %s to %s",
                            self.domain_id,
                            ", ".join(pending.values()),
                        )
                    else:
                        log.debug("bus not up yet (%s); retrying in %.1fs", exc.details(), backoff)
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
                failed_rounds += 1
        self.created.set()
