"""A kernel's DomainService takes batches of pushed events through its one-event handler,
in order, stopping at the first it does not acknowledge (the servicer alone, no gRPC)."""

from __future__ import annotations

from typing import Any

import pytest

from grace.domain.v1 import domain_pb2
from grace.eventbus.v1 import event_pb2
from services.common.errors import InvalidArgument
from services.common.event_delivery import MAX_DELIVER_EVENTS
from services.kernels.domain import KernelDomainServicer

ACK, RETRY, DROP = (
    domain_pb2.DELIVERY_OUTCOME_ACK,
    domain_pb2.DELIVERY_OUTCOME_RETRY,
    domain_pb2.DELIVERY_OUTCOME_DROP,
)


def batch(*answers: str) -> domain_pb2.DeliverEventsRequest:
    return domain_pb2.DeliverEventsRequest(
        domain_id="kernel",
        events=[
            event_pb2.Event(id=answer, event_type="x.y", sequence=n)
            for n, answer in enumerate(answers)
        ],
        attempt=1,
    )


def kernel(handled: list[str]) -> KernelDomainServicer:
    async def on_event(event: event_pb2.Event) -> bool:
        handled.append(event.id)
        if event.id == "invalid":
            raise InvalidArgument("data.n", "must be a number")
        if event.id == "crash":
            raise KeyError("secret")
        return event.id != "retry"

    return KernelDomainServicer("kernel", "1", [], {}, on_event)


async def deliver(servicer: KernelDomainServicer, request: Any) -> list[tuple[int, str]]:
    response = await servicer.DeliverEvents(request, None)  # type: ignore[arg-type]
    return [(r.outcome, r.reason) for r in response.results]


async def test_events_are_handled_in_order_up_to_the_first_not_acknowledged() -> None:
    handled: list[str] = []
    servicer = kernel(handled)
    assert await deliver(servicer, batch("a", "b", "retry", "c")) == [
        (ACK, ""),
        (ACK, ""),
        (RETRY, ""),
    ]
    assert handled == ["a", "b", "retry"]


async def test_a_failing_event_is_retried_with_the_status_it_would_have_had() -> None:
    handled: list[str] = []
    servicer = kernel(handled)
    results = await deliver(servicer, batch("a", "invalid", "b"))
    assert results == [(ACK, ""), (RETRY, "INVALID_ARGUMENT: data.n: must be a number")]
    # An unexpected error says INTERNAL and nothing of the exception, as a status would.
    assert await deliver(servicer, batch("crash", "b")) == [(RETRY, "INTERNAL: internal error")]
    assert handled == ["a", "invalid", "crash"]


async def test_a_kernel_without_events_drops_them_and_bad_batches_are_refused() -> None:
    silent = KernelDomainServicer("kernel", "1", [], {})
    assert await deliver(silent, batch("a", "b")) == [(DROP, "this kernel takes no events")]
    servicer = kernel([])
    with pytest.raises(InvalidArgument, match="must not be empty"):
        await deliver(servicer, batch())
    with pytest.raises(InvalidArgument, match="at most"):
        await deliver(servicer, batch(*["a"] * (MAX_DELIVER_EVENTS + 1)))
    untyped = batch("a")
    untyped.events.add(id="b")
    with pytest.raises(InvalidArgument, match=r"events\[1\].event_type"):
        await deliver(servicer, untyped)
