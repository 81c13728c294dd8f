"""The domain's side of push delivery in batches (`DomainService.DeliverEvents`).

The bus hands a domain several events of one subscription at once when more than one is
waiting. The domain handles them in order and stops at the first it does not acknowledge,
so its answer is one result per event handled: ACKs, then at most one RETRY or DROP. The
events after the last result go back to the bus, which delivers them again later; the
order a subscriber sees is the same as with one `DeliverEvent` call per event.

A failure the single call would have answered with an error status (a refused signature,
a bug) is that event's RETRY here, with the status in the reason, as the bus would have
recorded it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from grace.domain.v1 import domain_pb2
from grace.eventbus.v1 import event_pb2
from services.common.errors import GraceError, InvalidArgument
from services.common.timestamps import to_duration

log = logging.getLogger(__name__)

# Most events one DeliverEvents request may carry (the bus sends far fewer; the gRPC
# message limit bounds their bytes).
MAX_DELIVER_EVENTS = 1000


@dataclass(frozen=True)
class Handled:
    """What a domain made of one pushed event.

    Attributes:
        outcome: A `DeliveryOutcome`.
        reason: Why, for RETRY and DROP.
        retry_after_s: For RETRY: the least wait before the next attempt; None leaves it
            to the bus.
    """

    outcome: domain_pb2.DeliveryOutcome.ValueType
    reason: str = ""
    retry_after_s: float | None = None

    @property
    def acked(self) -> bool:
        return self.outcome == domain_pb2.DELIVERY_OUTCOME_ACK

    def to_proto(self) -> domain_pb2.DeliverEventResponse:
        response = domain_pb2.DeliverEventResponse(outcome=self.outcome, reason=self.reason[:1024])
        if self.retry_after_s is not None:
            response.retry_after.CopyFrom(to_duration(self.retry_after_s))
        return response


ACK = Handled(domain_pb2.DELIVERY_OUTCOME_ACK)


def failed(exc: Exception) -> Handled:
    """RETRY for an event whose handling raised, with the status the single call would have
    answered in the reason."""
    if isinstance(exc, GraceError):
        return Handled(domain_pb2.DELIVERY_OUTCOME_RETRY, f"{exc.code.name}: {exc.message}")
    log.error("handling a pushed event failed", exc_info=exc)
    return Handled(domain_pb2.DELIVERY_OUTCOME_RETRY, "INTERNAL: internal error")


def require_events(request: domain_pb2.DeliverEventsRequest) -> None:
    """Refuses a request without events, with too many, or with one lacking its type."""
    if not request.events:
        raise InvalidArgument("events", "must not be empty")
    if len(request.events) > MAX_DELIVER_EVENTS:
        raise InvalidArgument("events", f"must have at most {MAX_DELIVER_EVENTS} events")
    for position, event in enumerate(request.events):
        if not event.event_type:
            raise InvalidArgument(f"events[{position}].event_type", "is required")


async def handle_in_order(
    events: Sequence[event_pb2.Event],
    handle: Callable[[event_pb2.Event, int], Awaitable[Handled]],
    first_attempt: int,
) -> list[Handled]:
    """Hands each event to `handle(event, attempt)` in turn, stopping after the first that is
    not acknowledged; returns what each event handled came to."""
    results: list[Handled] = []
    for position, event in enumerate(events):
        try:
            handled = await handle(event, max(1, first_attempt) if position == 0 else 1)
        except Exception as exc:
            handled = failed(exc)
        results.append(handled)
        if not handled.acked:
            break
    return results


def to_response(results: Sequence[Handled]) -> domain_pb2.DeliverEventsResponse:
    """The DeliverEvents answer for the events handled."""
    return domain_pb2.DeliverEventsResponse(results=[handled.to_proto() for handled in results])
