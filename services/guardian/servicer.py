"""gRPC adapter of Guardian: proto in, supervisor or healer call, proto out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc

from grace.guardian.v1 import guardian_pb2, guardian_pb2_grpc
from services.common.auth import acting_for, caller_certificate, current_principal
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.governance_client import DECISION_METADATA
from services.common.pagination import (
    decode_token,
    encode_token,
    encoded_size,
    page_size,
    take_page,
)
from services.common.pki import cert_pem, certificate_identity
from services.common.timestamps import to_timestamp
from services.common.validation import require_text
from services.guardian.credentials import Credentials
from services.guardian.healing_workflow import HealingWorkflows
from services.guardian.model import ComponentStatus, HealResult, State, SystemStatus
from services.guardian.playbooks import Healer
from services.guardian.ports import tier_name
from services.guardian.supervisor import Supervisor

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

STATE_TO_PROTO = {
    State.PENDING: guardian_pb2.COMPONENT_STATE_PENDING,
    State.STARTING: guardian_pb2.COMPONENT_STATE_STARTING,
    State.SERVING: guardian_pb2.COMPONENT_STATE_SERVING,
    State.NOT_SERVING: guardian_pb2.COMPONENT_STATE_NOT_SERVING,
    State.BACKOFF: guardian_pb2.COMPONENT_STATE_BACKOFF,
    State.STOPPING: guardian_pb2.COMPONENT_STATE_STOPPING,
    State.STOPPED: guardian_pb2.COMPONENT_STATE_STOPPED,
    State.FAILED: guardian_pb2.COMPONENT_STATE_FAILED,
}
_SYSTEM_TO_PROTO = {
    SystemStatus.BOOTING: guardian_pb2.SYSTEM_STATUS_BOOTING,
    SystemStatus.SERVING: guardian_pb2.SYSTEM_STATUS_SERVING,
    SystemStatus.DEGRADED: guardian_pb2.SYSTEM_STATUS_DEGRADED,
    SystemStatus.FAILED: guardian_pb2.SYSTEM_STATUS_FAILED,
    SystemStatus.STOPPING: guardian_pb2.SYSTEM_STATUS_STOPPING,
}
_MAX_NAME = 64
_MAX_REASON = 512


def component_to_proto(status: ComponentStatus) -> guardian_pb2.Component:
    """The wire form of a component."""
    spec = status.spec
    return guardian_pb2.Component(
        name=status.name,
        group=spec.group,
        port=status.port,
        address=status.address,
        pid=status.pid,
        state=STATE_TO_PROTO[status.state],
        chunk=spec.chunk,
        depends_on=spec.depends_on,
        can_fail=spec.can_fail,
        health_service=spec.health_service,
        health_http_path=spec.health_http_path,
        capabilities=spec.capabilities,
        restarts=status.restarts,
        total_restarts=status.total_restarts,
        state_since=to_timestamp(status.state_since),
        started_at=to_timestamp(status.started_at if status.pid else 0),
        last_error=status.last_error,
        last_exit_code=status.last_exit_code,
        log_path=str(status.log_path),
        probe_latency_ms=status.probe_latency_ms,
        last_probe_at=to_timestamp(status.last_probe_at),
        tier=tier_name(status.port),
    )


def _heal_to_proto(result: HealResult) -> guardian_pb2.HealResponse:
    return guardian_pb2.HealResponse(
        component_name=result.component.name,
        playbook=result.playbook,
        success=result.success,
        message=result.message,
        findings=[
            guardian_pb2.Finding(check=f.check, ok=f.ok, detail=f.detail) for f in result.findings
        ],
        component=component_to_proto(result.component),
    )


def _asker(context: Context) -> tuple[str, str]:
    """(actor, governance decision id) of the call: the authenticated principal (a Grace
    component may name whom it acts for in `x-actor`; see `acting_for`)."""
    metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
    return acting_for(metadata.get("x-actor", "")), metadata.get(DECISION_METADATA, "")


def _name(value: str) -> str:
    return require_text("component_name", value, max_length=_MAX_NAME, required=True)


MAX_CSR_BYTES = 8192


class GuardianServicer(guardian_pb2_grpc.GuardianServiceServicer):
    """Serves `grace.guardian.v1.GuardianService` over the supervisor and the healer."""

    def __init__(
        self,
        supervisor: Supervisor,
        healer: Healer,
        shutdown: asyncio.Event,
        workflows: HealingWorkflows | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        self._workflows = workflows
        self._supervisor = supervisor
        self._healer = healer
        self._shutdown = shutdown
        self._credentials = credentials

    async def ListComponents(
        self, request: guardian_pb2.ListComponentsRequest, context: Context
    ) -> guardian_pb2.ListComponentsResponse:
        size = page_size(request.page_size)
        position = decode_token(request.page_token) or {}
        offset = position.get("offset", 0)
        if not isinstance(offset, int) or offset < 0:
            raise InvalidArgument("page_token", "is not a token this service issued")
        statuses = self._supervisor.statuses()
        page, more = take_page(
            [component_to_proto(s) for s in statuses[offset : offset + size + 1]],
            size,
            encoded_size,
        )
        return guardian_pb2.ListComponentsResponse(
            components=page,
            next_page_token=encode_token({"offset": offset + len(page)}) if more else "",
            total_size=len(statuses),
        )

    async def GetComponent(
        self, request: guardian_pb2.GetComponentRequest, context: Context
    ) -> guardian_pb2.GetComponentResponse:
        status = self._supervisor.status(_name(request.component_name))
        return guardian_pb2.GetComponentResponse(component=component_to_proto(status))

    async def CheckComponents(
        self, request: guardian_pb2.CheckComponentsRequest, context: Context
    ) -> guardian_pb2.CheckComponentsResponse:
        results = await self._healer.check_all()
        checks = [
            guardian_pb2.ComponentCheck(
                component_name=status.name,
                port=status.port,
                state=STATE_TO_PROTO[status.state],
                healthy=obs.serving,
                status=obs.status,
                latency_ms=obs.latency_ms,
                error=obs.error,
            )
            for status, obs in results
        ]
        return guardian_pb2.CheckComponentsResponse(
            checks=checks,
            all_healthy=all(c.healthy for c in checks),
            checked_at=to_timestamp(time.time()),
        )

    async def Heal(
        self, request: guardian_pb2.HealRequest, context: Context
    ) -> guardian_pb2.HealResponse:
        actor, decision_id = _asker(context)
        reason = require_text("reason", request.reason, max_length=_MAX_REASON)
        if request.workflow:
            return await self._heal_workflow(request, actor)
        result = await self._healer.heal(
            _name(request.component_name),
            request.playbook,
            actor=actor,
            decision_id=decision_id,
            reason=reason,
        )
        return _heal_to_proto(result)

    async def _heal_workflow(
        self, request: guardian_pb2.HealRequest, actor: str
    ) -> guardian_pb2.HealResponse:
        if request.component_name or request.playbook:
            raise InvalidArgument(
                "workflow", "runs on the whole system: leave component_name and playbook empty"
            )
        if self._workflows is None:
            raise FailedPrecondition("this Guardian runs no healing workflows (no orchestrator)")
        done = await self._workflows.run(request.workflow, actor)
        return guardian_pb2.HealResponse(
            playbook=done.workflow,
            workflow=done.workflow,
            success=done.success,
            message=done.message,
            findings=[
                guardian_pb2.Finding(check=f.check, ok=f.ok, detail=f.detail) for f in done.findings
            ],
            execution_id=done.execution_id,
        )

    async def RestartComponent(
        self, request: guardian_pb2.RestartComponentRequest, context: Context
    ) -> guardian_pb2.RestartComponentResponse:
        actor, decision_id = _asker(context)
        status = await self._healer.restart(
            _name(request.component_name), actor=actor, decision_id=decision_id
        )
        return guardian_pb2.RestartComponentResponse(component=component_to_proto(status))

    async def StopComponent(
        self, request: guardian_pb2.StopComponentRequest, context: Context
    ) -> guardian_pb2.StopComponentResponse:
        actor, decision_id = _asker(context)
        status = await self._healer.stop(
            _name(request.component_name), actor=actor, decision_id=decision_id
        )
        return guardian_pb2.StopComponentResponse(component=component_to_proto(status))

    async def StartComponent(
        self, request: guardian_pb2.StartComponentRequest, context: Context
    ) -> guardian_pb2.StartComponentResponse:
        actor, decision_id = _asker(context)
        status = await self._healer.start(
            _name(request.component_name), actor=actor, decision_id=decision_id
        )
        return guardian_pb2.StartComponentResponse(component=component_to_proto(status))

    async def WatchComponents(
        self, request: guardian_pb2.WatchComponentsRequest, context: Context
    ) -> AsyncIterator[guardian_pb2.WatchComponentsResponse]:
        async for change in self._supervisor.follow(self._shutdown):
            yield guardian_pb2.WatchComponentsResponse(
                component=component_to_proto(change.component),
                previous_state=STATE_TO_PROTO[change.previous]
                if change.previous is not None
                else guardian_pb2.COMPONENT_STATE_UNSPECIFIED,
                snapshot=change.snapshot,
            )

    async def GetSystemHealth(
        self, request: guardian_pb2.GetSystemHealthRequest, context: Context
    ) -> guardian_pb2.GetSystemHealthResponse:
        health = self._supervisor.system_health()
        return guardian_pb2.GetSystemHealthResponse(
            status=_SYSTEM_TO_PROTO[health.status],
            total_components=health.total,
            serving_components=health.serving,
            components_by_state=health.by_state,
            unhealthy_required=health.unhealthy_required,
            started_at=to_timestamp(health.started_at),
            boot_complete=health.boot_complete,
        )

    async def JoinDomain(
        self, request: guardian_pb2.JoinDomainRequest, context: Context
    ) -> guardian_pb2.JoinDomainResponse:
        if self._credentials is None:
            raise FailedPrecondition("Grace runs with --insecure: there is no CA to join")
        require_text("csr_pem", request.csr_pem, max_length=MAX_CSR_BYTES, required=True)
        cert = self._credentials.join(
            current_principal(),
            request.csr_pem.encode(),
            request.signing_public_key,
            request.signing_key_signature,
            caller_certificate(context),
        )
        return guardian_pb2.JoinDomainResponse(
            certificate_pem=cert_pem(cert).decode(),
            ca_pem=self._credentials.ca.bundle_pem.decode(),
            expires_at=to_timestamp(cert.not_valid_after_utc.timestamp()),
            spiffe_id=certificate_identity(cert).spiffe_id,
        )
