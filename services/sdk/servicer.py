"""gRPC adapter of a domain: `grace.domain.v1.DomainService` over a `Dispatcher`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import grpc
from google.protobuf import json_format, struct_pb2

from grace.domain.v1 import domain_pb2, domain_pb2_grpc
from grace.eventbus.v1 import event_pb2
from services.common.auth import current_principal
from services.common.call_metrics import caller_of
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.event_delivery import Handled, handle_in_order, require_events, to_response
from services.common.timestamps import from_timestamp
from services.common.validation import require_struct_size
from services.sdk.context import Event, Outcome
from services.sdk.dispatcher import Call, Delivery, Dispatcher
from services.sdk.tracing import consumer_span, current_traceparent, incoming_traceparent

ServicerContext: TypeAlias = grpc.aio.ServicerContext[Any, Any]

_OUTCOME_TO_PROTO = {
    Outcome.ACK: domain_pb2.DELIVERY_OUTCOME_ACK,
    Outcome.RETRY: domain_pb2.DELIVERY_OUTCOME_RETRY,
    Outcome.DROP: domain_pb2.DELIVERY_OUTCOME_DROP,
}


def to_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    """A Struct holding a JSON object."""
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def event_from_proto(event: Any) -> Event:
    """The handler's view of a wire event."""
    return Event(
        id=event.id,
        event_type=event.event_type,
        source_domain=event.source_domain,
        data=json_format.MessageToDict(event.data),
        time=from_timestamp(event.time),
        subject=event.subject,
        sequence=event.sequence,
        traceparent=event.traceparent,
    )


class DomainServicer(domain_pb2_grpc.DomainServiceServicer):
    """Serves DomainService for one domain.

    Args:
        domain_id: The domain's id; requests naming another domain are refused.
        dispatcher: Returns the running dispatcher (it exists once the service started).
        describe: Builds the DescribeDomain answer.
        subscription_pattern: The pattern of a push subscription id, when known.
    """

    def __init__(
        self,
        domain_id: str,
        dispatcher: Callable[[], Dispatcher],
        describe: Callable[[], domain_pb2.DescribeDomainResponse],
        subscription_pattern: Callable[[str], str | None],
    ) -> None:
        self._domain_id = domain_id
        self._dispatcher = dispatcher
        self._describe = describe
        self._subscription_pattern = subscription_pattern

    async def Execute(
        self, request: domain_pb2.ExecuteRequest, context: ServicerContext
    ) -> domain_pb2.ExecuteResponse:
        self._check_domain(request.domain_id)
        call = self._call(request, context)
        result = await self._dispatcher().execute(call)
        return domain_pb2.ExecuteResponse(output=to_struct(result.output), replayed=result.replayed)

    async def Compensate(
        self, request: domain_pb2.CompensateRequest, context: ServicerContext
    ) -> domain_pb2.CompensateResponse:
        self._check_domain(request.domain_id)
        call = self._call(request, context)
        require_struct_size("output", request.output)
        output = json_format.MessageToDict(request.output)
        result = await self._dispatcher().compensate(call, output)
        return domain_pb2.CompensateResponse(
            output=to_struct(result.output), replayed=result.replayed
        )

    async def DeliverEvent(
        self, request: domain_pb2.DeliverEventRequest, context: ServicerContext
    ) -> domain_pb2.DeliverEventResponse:
        self._check_domain(request.domain_id)
        if not request.HasField("event") or not request.event.event_type:
            raise InvalidArgument("event.event_type", "is required")
        pattern = self._subscription_pattern(request.subscription_id)
        handled = await self._deliver(request.event, request.attempt, pattern)
        return handled.to_proto()

    async def DeliverEvents(
        self, request: domain_pb2.DeliverEventsRequest, context: ServicerContext
    ) -> domain_pb2.DeliverEventsResponse:
        self._check_domain(request.domain_id)
        require_events(request)
        pattern = self._subscription_pattern(request.subscription_id)

        async def deliver(event: event_pb2.Event, attempt: int) -> Handled:
            return await self._deliver(event, attempt, pattern)

        return to_response(await handle_in_order(request.events, deliver, request.attempt))

    async def _deliver(self, wire: event_pb2.Event, attempt: int, pattern: str | None) -> Handled:
        event = event_from_proto(wire)
        with consumer_span(f"deliver {event.event_type}", event.traceparent):
            delivery: Delivery = await self._dispatcher().deliver(
                event,
                attempt=max(1, attempt),
                pattern=pattern,
                traceparent=current_traceparent(event.traceparent),
            )
        return Handled(_OUTCOME_TO_PROTO[delivery.outcome], delivery.reason, delivery.retry_after_s)

    async def DescribeDomain(
        self, request: domain_pb2.DescribeDomainRequest, context: ServicerContext
    ) -> domain_pb2.DescribeDomainResponse:
        self._check_domain(request.domain_id)
        return self._describe()

    def _check_domain(self, domain_id: str) -> None:
        if domain_id and domain_id != self._domain_id:
            raise FailedPrecondition(
                f"domain_id: this is domain {self._domain_id!r}, not {domain_id!r}",
                reason="WRONG_DOMAIN",
                metadata={"field": "domain_id", "domain_id": self._domain_id},
            )

    def _call(self, request: Any, context: ServicerContext) -> Call:
        if not request.action:
            raise InvalidArgument("action", "is required")
        if request.attempt < 0:
            raise InvalidArgument("attempt", "must be >= 0")
        require_struct_size("input", request.input)
        return Call(
            action=request.action,
            input=json_format.MessageToDict(request.input),
            workflow_id=request.workflow_id,
            execution_id=request.execution_id,
            step_id=request.step_id,
            attempt=max(1, request.attempt),
            idempotency_key=request.idempotency_key,
            traceparent=current_traceparent(incoming_traceparent(context.invocation_metadata())),
            caller=caller_of(current_principal()),
        )
