"""What a firing calls (scheduler and trigger mesh): the orchestrator (workflows), domains
(through the registry) and the tasks kernel. Events need no peer: they leave through the
firing kernel's outbox.

Each call carries an idempotency key derived from the firing, so a firing run again by
another instance after its first instance died (see `store`) starts the workflow or runs
the domain action once: the orchestrator answers the same execution for the same
`request_id`, and a domain the stored result for the same idempotency key.

With `wait_for_orchestrator`, calls to the orchestrator wait for it to be reachable, within
their deadline, instead of failing at once while it is down (gRPC's wait-for-ready): a
firing due while the orchestrator starts (at boot, or while Guardian restarts it) starts its
workflow once the orchestrator is up, which the idempotency key makes safe to wait for. The
scheduler waits so (a failed firing is recorded, not tried again); the trigger mesh fails
at once and retries the firing with backoff, so that its slots for concurrent firings are
not held by waits while the orchestrator is down.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import grpc

from grace.domain.v1 import domain_pb2
from grace.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from services.common.channels import channel
from services.common.domain_router import CallError, DomainRouter, from_struct, to_struct

ACTIVE_EXECUTION_STATES = frozenset(
    {
        orchestrator_pb2.EXECUTION_STATE_RUNNING,
        orchestrator_pb2.EXECUTION_STATE_COMPENSATING,
    }
)


class ActionFailed(Exception):
    """A firing's action failed; the message says where and why."""


class Peers(Protocol):
    """The calls a firing makes."""

    async def start_workflow(
        self, workflow_id: str, data: dict[str, Any], request_id: str
    ) -> dict[str, Any]:
        """Starts an execution; returns `{"execution_id": ...}`. Raises ActionFailed."""

    async def execution_running(self, execution_id: str) -> bool:
        """Whether an execution is still running. Raises ActionFailed."""

    async def call_domain(
        self, params: dict[str, Any], data: dict[str, Any], idempotency_key: str
    ) -> dict[str, Any]:
        """Runs a domain action; returns `{"domain_id", "output"}`. Raises ActionFailed."""

    async def create_task(self, params: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        """Creates an operator task. Raises ActionFailed."""


class PeerClients:
    """`Peers` over gRPC.

    Args:
        orchestrator_address: `host:port` of the orchestrator.
        registry_address: `host:port` of the registry (resolves domain targets).
        timeout_s: Deadline of each call (shorter than the firing lease).
        wait_for_orchestrator: Calls to the orchestrator wait for it while it is down,
            until their deadline, instead of failing UNAVAILABLE at once.
    """

    def __init__(
        self,
        orchestrator_address: str,
        registry_address: str,
        *,
        timeout_s: float = 30.0,
        wait_for_orchestrator: bool = False,
    ) -> None:
        self._orchestrator_address = orchestrator_address
        self._registry_address = registry_address
        self.timeout_s = timeout_s
        self._wait_for_orchestrator = wait_for_orchestrator
        self._channels: list[grpc.aio.Channel] = []
        self._orchestrator: orchestrator_pb2_grpc.OrchestratorServiceAsyncStub | None = None
        self._router: DomainRouter | None = None

    def _orch(self) -> orchestrator_pb2_grpc.OrchestratorServiceAsyncStub:
        # Opened on first use: channels bind to the running loop.
        if self._orchestrator is None:
            chan = channel(self._orchestrator_address)
            self._channels.append(chan)
            self._orchestrator = orchestrator_pb2_grpc.OrchestratorServiceStub(chan)
        return self._orchestrator

    def _domains(self) -> DomainRouter:
        if self._router is None:
            chan = channel(self._registry_address)
            self._channels.append(chan)
            self._router = DomainRouter(chan)
        return self._router

    async def close(self) -> None:
        """Closes every channel."""
        if self._router is not None:
            await self._router.close()
        await asyncio.gather(*(c.close() for c in self._channels), return_exceptions=True)
        self._channels = []

    async def start_workflow(
        self, workflow_id: str, data: dict[str, Any], request_id: str
    ) -> dict[str, Any]:
        try:
            response = await self._orch().ExecuteWorkflow(
                orchestrator_pb2.ExecuteWorkflowRequest(
                    workflow_id=workflow_id, input=to_struct(data), request_id=request_id
                ),
                timeout=self.timeout_s,
                wait_for_ready=self._wait_for_orchestrator,
            )
        except grpc.aio.AioRpcError as exc:
            raise ActionFailed(f"orchestrator: {exc.code().name}: {exc.details()}") from exc
        return {"execution_id": response.execution_id, "workflow_id": workflow_id}

    async def execution_running(self, execution_id: str) -> bool:
        try:
            response = await self._orch().GetExecution(
                orchestrator_pb2.GetExecutionRequest(execution_id=execution_id),
                timeout=self.timeout_s,
                wait_for_ready=self._wait_for_orchestrator,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise ActionFailed(f"orchestrator: {exc.code().name}: {exc.details()}") from exc
        return response.execution.state in ACTIVE_EXECUTION_STATES

    async def call_domain(
        self, params: dict[str, Any], data: dict[str, Any], idempotency_key: str
    ) -> dict[str, Any]:
        kind, key = (
            ("domain", params["domain_id"])
            if params.get("domain_id")
            else ("capability", params["capability"])
        )
        action = params["action"]

        async def invoke(stub: Any, domain_id: str) -> domain_pb2.ExecuteResponse:
            response: domain_pb2.ExecuteResponse = await stub.Execute(
                domain_pb2.ExecuteRequest(
                    domain_id=domain_id,
                    action=action,
                    input=to_struct(data),
                    attempt=1,
                    idempotency_key=idempotency_key,
                ),
                timeout=self.timeout_s,
            )
            return response

        try:
            domain_id, response = await self._domains().call(kind, key, invoke)
        except CallError as exc:
            raise ActionFailed(exc.message) from exc
        return {"domain_id": domain_id, "output": from_struct(response.output)}

    async def create_task(self, params: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        raise ActionFailed("no tasks service is configured: task actions cannot run here")
