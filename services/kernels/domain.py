"""How a kernel serves `grace.domain.v1.DomainService` and registers as a domain.

A kernel declares its actions as async functions from a JSON-like input to a JSON-like
output; `KernelDomainServicer` serves them (Execute with idempotency keys, DescribeDomain,
Compensate for none, DeliverEvent to an optional handler) and `RegistryLease` keeps the
kernel registered in the registry with heartbeats, retrying with backoff while the
registry is down. The domain SDK (services/sdk) offers the same for user domains; the
kernels keep this small adapter so they depend on nothing but the contracts.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
from google.protobuf import json_format, struct_pb2

from grace.domain.v1 import domain_pb2, domain_pb2_grpc
from grace.eventbus.v1 import event_pb2
from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.channels import channel
from services.common.errors import FailedPrecondition, NotFound
from services.common.timestamps import to_duration
from services.common.validation import require_struct_size

log = logging.getLogger(__name__)

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[[dict[str, Any], domain_pb2.ExecuteRequest], Awaitable[dict[str, Any]]]
EventHandler = Callable[[event_pb2.Event], Awaitable[domain_pb2.DeliveryOutcome.ValueType]]
_REPLAY_CACHE = 4096


@dataclass(frozen=True)
class Action:
    """One action a kernel offers to workflows.

    Attributes:
        name: Action name, for example "verify".
        description: What it does.
        handler: Runs it on the input (and the request, for workflow and step ids);
            raises a GraceError to fail the step.
    """

    name: str
    description: str
    handler: Handler


def struct_to_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as plain Python (numbers come back as floats, integral ones as ints)."""
    return _ints(json_format.MessageToDict(value))  # type: ignore[no-any-return]


def _ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    return value


def dict_to_struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    """Plain Python as a Struct."""
    out = struct_pb2.Struct()
    out.update(dict(value))
    return out


class KernelDomainServicer(domain_pb2_grpc.DomainServiceServicer):
    """Serves DomainService over a kernel's actions.

    Args:
        domain_id: The kernel's domain id; requests for another id are refused.
        version: Software version reported by DescribeDomain.
        capabilities: Capabilities reported (and registered).
        actions: The actions.
        on_event: Handles pushed events; None answers DROP to every event.
        event_patterns: Patterns the kernel subscribes to, reported by DescribeDomain.
    """

    def __init__(
        self,
        domain_id: str,
        version: str,
        capabilities: Sequence[str],
        actions: Sequence[Action],
        *,
        on_event: EventHandler | None = None,
        event_patterns: Sequence[str] = (),
    ) -> None:
        self.domain_id = domain_id
        self.version = version
        self.capabilities = list(capabilities)
        self.actions = {a.name: a for a in actions}
        self.on_event = on_event
        self.event_patterns = list(event_patterns)
        # Results by idempotency key: a retried step returns the first result. Bounded;
        # actions that must survive restarts (governance's verify) are idempotent by
        # themselves through request ids.
        self._results: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def _check_domain(self, domain_id: str) -> None:
        if domain_id and domain_id != self.domain_id:
            raise FailedPrecondition(
                f"this is domain {self.domain_id!r}, not {domain_id!r}", reason="WRONG_DOMAIN"
            )

    async def Execute(
        self, request: domain_pb2.ExecuteRequest, context: Context
    ) -> domain_pb2.ExecuteResponse:
        self._check_domain(request.domain_id)
        action = self.actions.get(request.action)
        if action is None:
            raise NotFound("action", request.action)
        key = request.idempotency_key
        if key and key in self._results:
            return domain_pb2.ExecuteResponse(
                output=dict_to_struct(self._results[key]), replayed=True
            )
        payload = struct_to_dict(require_struct_size("input", request.input))
        output = await action.handler(payload, request)
        if key:
            self._results[key] = output
            while len(self._results) > _REPLAY_CACHE:
                self._results.popitem(last=False)
        return domain_pb2.ExecuteResponse(output=dict_to_struct(output))

    async def Compensate(
        self, request: domain_pb2.CompensateRequest, context: Context
    ) -> domain_pb2.CompensateResponse:
        self._check_domain(request.domain_id)
        if request.action not in self.actions:
            raise NotFound("action", request.action)
        # Kernel actions only read or record decisions: there is nothing to undo, and the
        # record of the decision must stay.
        return domain_pb2.CompensateResponse(
            output=dict_to_struct({"compensated": False, "reason": "nothing to undo"})
        )

    async def DeliverEvent(
        self, request: domain_pb2.DeliverEventRequest, context: Context
    ) -> domain_pb2.DeliverEventResponse:
        self._check_domain(request.domain_id)
        if self.on_event is None:
            return domain_pb2.DeliverEventResponse(
                outcome=domain_pb2.DELIVERY_OUTCOME_DROP, reason="no event handler"
            )
        outcome = await self.on_event(request.event)
        return domain_pb2.DeliverEventResponse(outcome=outcome)

    async def DescribeDomain(
        self, request: domain_pb2.DescribeDomainRequest, context: Context
    ) -> domain_pb2.DescribeDomainResponse:
        self._check_domain(request.domain_id)
        return domain_pb2.DescribeDomainResponse(
            domain_id=self.domain_id,
            version=self.version,
            capabilities=self.capabilities,
            actions=[
                domain_pb2.ActionInfo(name=a.name, description=a.description, compensable=False)
                for a in self.actions.values()
            ],
            event_patterns=self.event_patterns,
        )


class RegistryLease:
    """Keeps a kernel registered in the registry: registers, then heartbeats.

    Args:
        registry_address: `host:port` of the registry; empty disables registration.
        domain_id: The kernel's domain id.
        port: Port the kernel serves on.
        capabilities: Its capabilities.
        version: Its version.
        lease_ttl_s: Lease length; heartbeats go every third of it.
    """

    def __init__(
        self,
        registry_address: str,
        domain_id: str,
        port: Callable[[], int],
        capabilities: Sequence[str],
        version: str,
        *,
        lease_ttl_s: float = 30.0,
    ) -> None:
        self.registry_address = registry_address
        self.domain_id = domain_id
        self.port = port
        self.capabilities = list(capabilities)
        self.version = version
        self.lease_ttl_s = lease_ttl_s
        self.registered = False

    async def run(self) -> None:
        """Registers and heartbeats until cancelled; re-registers after a lost lease."""
        if not self.registry_address:
            return
        backoff = 1.0
        async with channel(self.registry_address) as chan:
            stub = registry_pb2_grpc.RegistryServiceStub(chan)
            while True:
                try:
                    if not self.registered:
                        await stub.RegisterDomain(
                            registry_pb2.RegisterDomainRequest(
                                domain_id=self.domain_id,
                                port=self.port(),
                                capabilities=self.capabilities,
                                version=self.version,
                                metadata={"kind": "kernel"},
                                lease_ttl=to_duration(self.lease_ttl_s),
                            ),
                            timeout=5.0,
                        )
                        self.registered = True
                        log.info("%s registered in the registry", self.domain_id)
                    else:
                        await stub.Heartbeat(
                            registry_pb2.HeartbeatRequest(domain_id=self.domain_id), timeout=5.0
                        )
                    backoff = 1.0
                    await asyncio.sleep(self.lease_ttl_s / 3)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() == grpc.StatusCode.NOT_FOUND:
                        self.registered = False  # the lease lapsed: register again
                    log.warning(
                        "%s: registry at %s: %s; retrying in %.0fs",
                        self.domain_id,
                        self.registry_address,
                        exc.code().name,
                        backoff,
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(30.0, backoff * 2)
