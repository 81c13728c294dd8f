"""The tasks kernel's peers over gRPC: what a cycle reads, where tasks run, and governance's
approval queue.

`GrpcSources` reads each source through its real RPC (registry ListDomains, immune
ListAnomalies, bus ListDeadLetters, orchestrator ListExecutions, memory ListByDomain); a
failing call raises and the cycle records that source as degraded. `RemedyTarget` runs a
task's remedy: `heal:<playbook>` with Guardian's Heal (sending the task's governance
decision, which Guardian redeems once), `workflow:<id>` with the orchestrator's
ExecuteWorkflow (waiting for the outcome; the request id makes a resent call the same
execution), `action:<domain>.<action>` with the domain's Execute (found in the registry;
the idempotency key is the task and attempt). `GovernanceApprovals` settles and follows
approval requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from grace.domain.v1 import domain_pb2, domain_pb2_grpc
from grace.eventbus.v1 import eventbus_pb2, eventbus_pb2_grpc
from grace.guardian.v1 import guardian_pb2, guardian_pb2_grpc
from grace.kernels.governance.v1 import governance_pb2, governance_pb2_grpc
from grace.kernels.immune.v1 import immune_pb2, immune_pb2_grpc
from grace.memory.v1 import memory_pb2, memory_pb2_grpc
from grace.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.channels import channel
from services.common.errors import (
    Aborted,
    FailedPrecondition,
    GraceError,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
)
from services.common.governance_client import DECISION_METADATA, GovernanceClient
from services.common.timestamps import from_timestamp
from services.kernels.tasks.model import (
    AnomalySeen,
    DeadLetterSeen,
    DomainHealth,
    ExecutionSeen,
    PatternSeen,
    Task,
)
from services.kernels.tasks.squad import ACTOR, RunResult

_PAGE = 500
_STATUS = {
    registry_pb2.DOMAIN_STATUS_HEALTHY: "healthy",
    registry_pb2.DOMAIN_STATUS_DEGRADED: "degraded",
    registry_pb2.DOMAIN_STATUS_UNHEALTHY: "unhealthy",
}
_TERMINAL = {
    orchestrator_pb2.EXECUTION_STATE_SUCCEEDED,
    orchestrator_pb2.EXECUTION_STATE_ROLLED_BACK,
    orchestrator_pb2.EXECUTION_STATE_COMPENSATION_FAILED,
}


def attempt_key(task: Task) -> str:
    """The key of one attempt of a task (`task-<id>-<attempt>`), sent as the workflow's
    request id and the action's idempotency key: a resent call is the same run."""
    return f"task-{task.task_id}-{task.attempts}"


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(value)
    return result


class GrpcSources:
    """What a cycle reads, from the running platform.

    Args:
        channel_for: Opens (and keeps) a channel to a peer by component name.
        addresses: `host:port` of registry, immune, eventbus, orchestrator, memory.
        memory_domains: Domains whose shared-memory contributions are checked for failing
            patterns.
        window_s: How far back failed executions and dead letters count.
        clock: Epoch seconds.
        timeout_s: Deadline of each call.
    """

    def __init__(
        self,
        channel_for: Callable[[str], grpc.aio.Channel],
        *,
        memory_domains: Sequence[str] = ("immune", "tasks"),
        window_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
        timeout_s: float = 5.0,
    ) -> None:
        self._channel_for = channel_for
        self.memory_domains = tuple(memory_domains)
        self.window_s = window_s
        self.clock = clock
        self.timeout_s = timeout_s

    async def domains(self) -> Sequence[DomainHealth]:
        stub = registry_pb2_grpc.RegistryServiceStub(self._channel_for("registry"))
        found: list[DomainHealth] = []
        token = ""
        while True:
            page = await stub.ListDomains(
                registry_pb2.ListDomainsRequest(page_size=_PAGE, page_token=token),
                timeout=self.timeout_s,
            )
            found.extend(
                DomainHealth(
                    d.domain_id,
                    _STATUS.get(d.status, "unhealthy"),
                    d.metrics.success_rate if d.HasField("metrics") else 1.0,
                    d.metrics.latency_ms if d.HasField("metrics") else 0.0,
                )
                for d in page.domains
            )
            token = page.next_page_token
            if not token:
                return found

    async def anomalies(self) -> Sequence[AnomalySeen]:
        stub = immune_pb2_grpc.ImmuneServiceStub(self._channel_for("immune"))
        page = await stub.ListAnomalies(
            immune_pb2.ListAnomaliesRequest(page_size=_PAGE), timeout=self.timeout_s
        )
        return [
            AnomalySeen(a.component, a.kind, from_timestamp(a.detected_at) or 0.0)
            for a in page.anomalies
        ]

    async def dead_letters(self) -> Sequence[DeadLetterSeen]:
        stub = eventbus_pb2_grpc.EventBusServiceStub(self._channel_for("eventbus"))
        page = await stub.ListDeadLetters(
            eventbus_pb2.ListDeadLettersRequest(page_size=_PAGE), timeout=self.timeout_s
        )
        since = self.clock() - self.window_s
        return [
            DeadLetterSeen(d.domain_id, d.event.event_type, d.reason)
            for d in page.dead_letters
            if not d.redelivering and (from_timestamp(d.failed_at) or 0.0) >= since
        ]

    async def executions(self) -> Sequence[ExecutionSeen]:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(self._channel_for("orchestrator"))
        since = self.clock() - self.window_s
        seen: list[ExecutionSeen] = []
        for state in (
            orchestrator_pb2.EXECUTION_STATE_ROLLED_BACK,
            orchestrator_pb2.EXECUTION_STATE_COMPENSATION_FAILED,
        ):
            page = await stub.ListExecutions(
                orchestrator_pb2.ListExecutionsRequest(page_size=100, state=state),
                timeout=self.timeout_s,
            )
            for e in page.executions:
                if e.cancel_requested or (from_timestamp(e.updated_at) or 0.0) < since:
                    continue
                failed = next((s for s in e.steps if s.error or s.compensation_error), None)
                seen.append(
                    ExecutionSeen(
                        e.execution_id,
                        e.workflow_id,
                        state == orchestrator_pb2.EXECUTION_STATE_COMPENSATION_FAILED,
                        failed.domain_id if failed else "",
                        failed.action if failed else "",
                        (e.error or (failed.error if failed else ""))[:300],
                    )
                )
        return seen

    async def patterns(self) -> Sequence[PatternSeen]:
        stub = memory_pb2_grpc.SharedMemoryServiceStub(self._channel_for("memory"))
        seen: list[PatternSeen] = []
        for domain_id in self.memory_domains:
            page = await stub.ListByDomain(
                memory_pb2.ListByDomainRequest(domain_id=domain_id, page_size=_PAGE),
                timeout=self.timeout_s,
            )
            for c in page.contributions:
                if c.retracted or c.failed_applications <= c.successful_applications:
                    continue
                summary = c.content.fields.get("summary")
                seen.append(
                    PatternSeen(
                        c.contribution_id,
                        c.domain_id,
                        c.contribution_type,
                        summary.string_value if summary is not None else "",
                        int(c.successful_applications),
                        int(c.failed_applications),
                    )
                )
        return seen


class RemedyTarget:
    """Runs remedies on the platform.

    Args:
        channel_for: Opens (and keeps) a channel to a peer by component name or address.
        heal_timeout_s: Deadline of a heal (a restart waits for the component to serve).
        workflow_timeout_s: Deadline of a workflow run.
        action_timeout_s: Deadline of a domain action.
    """

    def __init__(
        self,
        channel_for: Callable[[str], grpc.aio.Channel],
        *,
        heal_timeout_s: float = 120.0,
        workflow_timeout_s: float = 300.0,
        action_timeout_s: float = 60.0,
    ) -> None:
        self._channel_for = channel_for
        self.heal_timeout_s = heal_timeout_s
        self.workflow_timeout_s = workflow_timeout_s
        self.action_timeout_s = action_timeout_s

    async def run(self, task: Task) -> RunResult:
        kind, _, name = task.remedy.partition(":")
        try:
            if kind == "heal":
                return await self._heal(task, name)
            if kind == "workflow":
                return await self._workflow(task, name)
            if kind == "action":
                return await self._action(task, name)
        except grpc.aio.AioRpcError as exc:
            return RunResult(False, f"{kind}: {exc.code().name}: {exc.details()}")
        return RunResult(False, f"unknown remedy {task.remedy!r}")

    def _input(self, task: Task) -> dict[str, Any]:
        return {
            "task_id": task.task_id,
            "target": task.target,
            "weak_point": task.weak_point.to_json(),
            "reason": task.reason,
        }

    async def _heal(self, task: Task, playbook: str) -> RunResult:
        stub = guardian_pb2_grpc.GuardianServiceStub(self._channel_for("guardian"))
        metadata = [("x-actor", ACTOR)]
        if task.decision_id:
            metadata.append((DECISION_METADATA, task.decision_id))
        response = await stub.Heal(
            guardian_pb2.HealRequest(
                component_name=task.target,
                playbook=playbook,
                reason=f"task {task.task_id}: {task.weak_point.reason}"[:500],
            ),
            timeout=self.heal_timeout_s,
            metadata=metadata,
        )
        return RunResult(
            response.success,
            response.message or f"{playbook} on {task.target}",
            {"component": response.component_name, "playbook": response.playbook},
        )

    async def _workflow(self, task: Task, workflow_id: str) -> RunResult:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(self._channel_for("orchestrator"))
        response = await stub.ExecuteWorkflow(
            orchestrator_pb2.ExecuteWorkflowRequest(
                workflow_id=workflow_id,
                input=_struct(self._input(task)),
                wait=True,
                request_id=attempt_key(task),
            ),
            timeout=self.workflow_timeout_s,
            metadata=[("x-actor", ACTOR)],
        )
        execution = response.execution
        state = orchestrator_pb2.ExecutionState.Name(execution.state)
        succeeded = execution.state == orchestrator_pb2.EXECUTION_STATE_SUCCEEDED
        return RunResult(
            succeeded,
            f"execution {execution.execution_id} {state}"
            + (f": {execution.error}" if execution.error else ""),
            {"execution_id": execution.execution_id, "state": state},
        )

    async def _action(self, task: Task, name: str) -> RunResult:
        domain_id, _, action = name.partition(".")
        registry = registry_pb2_grpc.RegistryServiceStub(self._channel_for("registry"))
        found = await registry.GetDomain(
            registry_pb2.GetDomainRequest(domain_id=domain_id), timeout=self.action_timeout_s
        )
        stub = domain_pb2_grpc.DomainServiceStub(self._channel_for(found.domain.address))
        response = await stub.Execute(
            domain_pb2.ExecuteRequest(
                domain_id=domain_id,
                action=action,
                input=_struct(self._input(task)),
                attempt=task.attempts,
                idempotency_key=attempt_key(task),
            ),
            timeout=self.action_timeout_s,
            metadata=[("x-actor", ACTOR)],
        )
        return RunResult(
            True, f"{domain_id}.{action} done", json_format.MessageToDict(response.output)
        )


_ERRORS: dict[grpc.StatusCode, type[GraceError]] = {
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.NOT_FOUND: FailedPrecondition,
    grpc.StatusCode.ABORTED: Aborted,
}


class GovernanceApprovals:
    """Governance's approval queue (implements `squad.Approvals`).

    Args:
        client: The governance client (its deadline and channel target are reused).
    """

    def __init__(self, client: GovernanceClient) -> None:
        self.client = client
        self._channel: grpc.aio.Channel | None = None
        self._stub_: governance_pb2_grpc.GovernanceServiceAsyncStub | None = None

    @property
    def _stub(self) -> governance_pb2_grpc.GovernanceServiceAsyncStub:
        if self._stub_ is None:
            self._channel = channel(self.client.target)
            self._stub_ = governance_pb2_grpc.GovernanceServiceStub(self._channel)
        return self._stub_

    async def approve(self, approval_id: str, approver: str, reason: str) -> None:
        try:
            await self._stub.Approve(
                governance_pb2.ApproveRequest(
                    approval_id=approval_id, approver=approver, reason=reason
                ),
                timeout=self.client.deadline_s,
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None

    async def reject(self, approval_id: str, approver: str, reason: str) -> None:
        try:
            await self._stub.Reject(
                governance_pb2.RejectRequest(
                    approval_id=approval_id, approver=approver, reason=reason
                ),
                timeout=self.client.deadline_s,
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from None

    async def wait(self, approval_id: str, timeout_s: float) -> str:
        try:
            return await self.client.wait_for_approval(approval_id, timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return "expired"  # governance no longer knows it: it can never be approved
            raise

    async def ensure_policy(self, policy_id: str, min_risk: str) -> bool:
        """Creates the policy that holds the kernel's tasks at or above `min_risk` for a
        person's approval (enforced whatever the global mode), unless a policy with this
        id exists already (then it is the operator's: left as it is). True when created."""
        risk = governance_pb2.RiskLevel.Value(f"RISK_LEVEL_{min_risk.upper()}")
        try:
            await self._stub.CreatePolicy(
                governance_pb2.CreatePolicyRequest(
                    policy=governance_pb2.Policy(
                        policy_id=policy_id,
                        description=f"a person approves the tasks kernel's {min_risk}-risk "
                        "and riskier tasks",
                        principal=ACTOR,
                        min_risk_level=risk,
                        effect=governance_pb2.EFFECT_REQUIRE_APPROVAL,
                        mode=governance_pb2.MODE_ENFORCE,
                    )
                ),
                timeout=self.client.deadline_s,
                metadata=[("x-actor", ACTOR)],
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.ALREADY_EXISTS:
                return False
            raise
        return True

    async def close(self) -> None:
        """Closes the channel."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub_ = None


def _error(exc: grpc.aio.AioRpcError) -> GraceError:
    """Governance's refusal as the same kind of error, its words kept."""
    details = f"governance: {exc.details() or exc.code().name}"
    if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument("approval", details)
    kind = _ERRORS.get(exc.code())
    if kind is not None:
        return kind(details)
    return Unavailable(details)
