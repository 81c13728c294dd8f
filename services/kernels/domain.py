"""`grace.domain.v1.DomainService` for the kernels, so workflows can call them as domains.

A kernel declares its actions as `KernelAction`s (an async handler from the input Struct,
as a dict, to an output dict, an optional compensation, a description) and optionally an
event handler; `KernelDomainServicer` serves them. Handlers receive the idempotency key so
that actions with effects (the log's `append`) can make retries safe in their own store.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
from google.protobuf import json_format, struct_pb2

from grace.domain.v1 import domain_pb2, domain_pb2_grpc
from grace.eventbus.v1 import event_pb2
from services.common.errors import FailedPrecondition, NotFound
from services.common.event_delivery import (
    ACK,
    Handled,
    handle_in_order,
    require_events,
    to_response,
)
from services.common.validation import require_struct_size

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[[dict[str, Any], str], Awaitable[dict[str, Any]]]
CompensationHandler = Callable[[dict[str, Any], dict[str, Any], str], Awaitable[dict[str, Any]]]
EventHandler = Callable[[event_pb2.Event], Awaitable[bool]]
# Handles several pushed events in order and says what each handled one came to, stopping
# after the first not acknowledged (see services.common.event_delivery).
EventBatchHandler = Callable[[Sequence[event_pb2.Event]], Awaitable[list[Handled]]]

_TAKES_NO_EVENTS = Handled(domain_pb2.DELIVERY_OUTCOME_DROP, "this kernel takes no events")
_RETRY = Handled(domain_pb2.DELIVERY_OUTCOME_RETRY)

SERVICE_NAME = domain_pb2.DESCRIPTOR.services_by_name["DomainService"].full_name


@dataclass(frozen=True)
class KernelAction:
    """One action a kernel offers to workflows.

    Attributes:
        handler: `(input, idempotency_key) -> output`.
        description: What it does (DescribeDomain).
        compensate: `(input, output, idempotency_key) -> report`, when undoable.
    """

    handler: Handler
    description: str
    compensate: CompensationHandler | None = None


def struct_to_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as a plain dict."""
    return json_format.MessageToDict(value)


def dict_to_struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    """A plain dict as a Struct."""
    result = struct_pb2.Struct()
    result.update(dict(value))
    return result


class KernelDomainServicer(domain_pb2_grpc.DomainServiceServicer):
    """Serves DomainService over a kernel's actions.

    Args:
        domain_id: The kernel's domain id ("immutable_log", "trust").
        version: Software version reported by DescribeDomain.
        capabilities: Capabilities registered in the registry.
        actions: Actions by name.
        on_event: Handles pushed events; returns False to ask for a retry.
        on_events: Handles a batch of pushed events at once (a kernel that can record them
            together, in one commit); without it a batch goes through `on_event` one
            event at a time.
        event_patterns: Patterns the kernel subscribes to (reported by DescribeDomain).
    """

    def __init__(
        self,
        domain_id: str,
        version: str,
        capabilities: Sequence[str],
        actions: Mapping[str, KernelAction],
        on_event: EventHandler | None = None,
        event_patterns: Sequence[str] = (),
        on_events: EventBatchHandler | None = None,
    ) -> None:
        self.domain_id = domain_id
        self.version = version
        self.capabilities = list(capabilities)
        self.actions = dict(actions)
        self._on_event = on_event
        self._on_events = on_events
        self._patterns = list(event_patterns)

    def _check_target(self, domain_id: str) -> None:
        if domain_id and domain_id != self.domain_id:
            raise FailedPrecondition(
                f"request for domain {domain_id!r} reached domain {self.domain_id!r}"
            )

    def _action(self, name: str) -> KernelAction:
        action = self.actions.get(name)
        if action is None:
            raise NotFound("action", name)
        return action

    async def Execute(
        self, request: domain_pb2.ExecuteRequest, context: Context
    ) -> domain_pb2.ExecuteResponse:
        self._check_target(request.domain_id)
        action = self._action(request.action)
        require_struct_size("input", request.input)
        output = await action.handler(struct_to_dict(request.input), request.idempotency_key)
        return domain_pb2.ExecuteResponse(output=dict_to_struct(output))

    async def Compensate(
        self, request: domain_pb2.CompensateRequest, context: Context
    ) -> domain_pb2.CompensateResponse:
        self._check_target(request.domain_id)
        action = self._action(request.action)
        if action.compensate is None:
            raise FailedPrecondition(f"action {request.action!r} has no compensation")
        report = await action.compensate(
            struct_to_dict(request.input), struct_to_dict(request.output), request.idempotency_key
        )
        return domain_pb2.CompensateResponse(output=dict_to_struct(report))

    async def DeliverEvent(
        self, request: domain_pb2.DeliverEventRequest, context: Context
    ) -> domain_pb2.DeliverEventResponse:
        self._check_target(request.domain_id)
        if self._on_event is None:
            return _TAKES_NO_EVENTS.to_proto()
        return (ACK if await self._on_event(request.event) else _RETRY).to_proto()

    async def DeliverEvents(
        self, request: domain_pb2.DeliverEventsRequest, context: Context
    ) -> domain_pb2.DeliverEventsResponse:
        self._check_target(request.domain_id)
        require_events(request)
        if self._on_events is not None:
            return to_response(await self._on_events(request.events))
        on_event = self._on_event
        if on_event is None:
            return to_response([_TAKES_NO_EVENTS])

        async def handle(event: event_pb2.Event, attempt: int) -> Handled:
            return ACK if await on_event(event) else _RETRY

        return to_response(await handle_in_order(request.events, handle, request.attempt))

    async def DescribeDomain(
        self, request: domain_pb2.DescribeDomainRequest, context: Context
    ) -> domain_pb2.DescribeDomainResponse:
        self._check_target(request.domain_id)
        return domain_pb2.DescribeDomainResponse(
            domain_id=self.domain_id,
            version=self.version,
            capabilities=self.capabilities,
            actions=[
                domain_pb2.ActionInfo(
                    name=name, description=a.description, compensable=a.compensate is not None
                )
                for name, a in sorted(self.actions.items())
            ],
            event_patterns=self._patterns,
        )
