"""Guardian's multi-domain healing workflow (seed 000, "With Guardian"): `full_system_heal`.

`Heal` with `workflow: "full_system_heal"` creates seed 000's workflow in the orchestrator,
with its three steps in order (`diagnostics.scan`, then `healing.fix`, then
`verification.verify`: the capabilities the immune kernel serves, routed through the
registry), executes it, waits for the end and answers one finding per step, with the
execution id (its record and signed proof stay in the orchestrator). The scan probes every
component; the fix heals the unhealthy ones through Guardian itself, which asks governance
before each playbook; the verification waits for them to serve again and fails the
workflow if one does not. Every run is journaled (`healing.started`, then
`healing.completed` or `healing.failed`, component `full_system_heal`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format

from grace.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from services.common.channels import channel
from services.common.errors import InvalidArgument, Unavailable
from services.guardian.journal import Journal
from services.guardian.model import Finding

FULL_SYSTEM_HEAL = "full_system_heal"
# Seed 000's workflow body, with the order its steps imply made explicit.
WORKFLOWS: dict[str, list[dict[str, Any]]] = {
    FULL_SYSTEM_HEAL: [
        {"id": "scan", "capability": "diagnostics", "action": "scan"},
        {"id": "fix", "capability": "healing", "action": "fix", "depends_on": ["scan"]},
        {"id": "verify", "capability": "verification", "action": "verify", "depends_on": ["fix"]},
    ]
}
EXECUTION_TIMEOUT_S = 600.0
_SUCCEEDED = orchestrator_pb2.EXECUTION_STATE_SUCCEEDED


@dataclass(frozen=True)
class WorkflowHeal:
    """What a healing workflow did."""

    workflow: str
    execution_id: str
    success: bool
    message: str
    findings: tuple[Finding, ...]


def _summary(step_id: str, output: dict[str, Any]) -> str:
    if step_id == "scan":
        unhealthy = [u.get("component", "?") for u in output.get("unhealthy", [])]
        return f"{output.get('checked', 0)} components probed; unhealthy: " + (
            ", ".join(unhealthy) or "none"
        )
    if step_id == "fix":
        heals = output.get("heals", [])
        if not heals:
            return "nothing to heal"
        return "; ".join(
            f"{h.get('component')}: {h.get('playbook') or '-'} "
            f"{'ok' if h.get('success') else 'failed'} ({h.get('message', '')})"
            for h in heals
        )
    if step_id == "verify":
        return "serving: " + (", ".join(output.get("verified", [])) or "none")
    return json.dumps(output, sort_keys=True)[:500]


class HealingWorkflows:
    """Runs Guardian's healing workflows through the orchestrator.

    Args:
        orchestrator_address: Where the orchestrator is, asked at each run (it may move).
        journal: Where decisions go.
    """

    def __init__(self, orchestrator_address: Callable[[], str], journal: Journal) -> None:
        self._address = orchestrator_address
        self.journal = journal

    async def run(self, name: str, actor: str = "") -> WorkflowHeal:
        """Runs the named healing workflow to its end.

        Raises:
            InvalidArgument: An unknown workflow.
            Unavailable: The orchestrator cannot be reached.
        """
        steps = WORKFLOWS.get(name)
        if steps is None:
            raise InvalidArgument("workflow", f"must be one of {', '.join(sorted(WORKFLOWS))}")
        request = orchestrator_pb2.CreateWorkflowRequest(
            name=name, description="Guardian's multi-domain healing (seed 000)"
        )
        json_format.ParseDict({"steps": steps}, request)
        await self.journal.decide("healing.started", name, workflow=name, actor=actor or "-")
        try:
            async with channel(self._address()) as chan:
                stub = orchestrator_pb2_grpc.OrchestratorServiceStub(chan)
                created = await stub.CreateWorkflow(request, timeout=30.0)
                executed = await stub.ExecuteWorkflow(
                    orchestrator_pb2.ExecuteWorkflowRequest(
                        workflow_id=created.workflow_id, wait=True
                    ),
                    timeout=EXECUTION_TIMEOUT_S,
                )
        except grpc.aio.AioRpcError as exc:
            await self.journal.decide("healing.failed", name, workflow=name, reason=exc.details())
            raise Unavailable(
                f"the orchestrator could not run {name}: {exc.code().name}: {exc.details()}"
            ) from None
        execution = executed.execution
        findings = tuple(
            Finding(
                step.step_id,
                step.state == orchestrator_pb2.STEP_STATE_SUCCEEDED,
                _summary(step.step_id, json_format.MessageToDict(step.output))
                if step.state == orchestrator_pb2.STEP_STATE_SUCCEEDED
                else (step.error or orchestrator_pb2.StepState.Name(step.state)),
            )
            for step in execution.steps
        )
        success = execution.state == _SUCCEEDED
        state = orchestrator_pb2.ExecutionState.Name(execution.state).removeprefix(
            "EXECUTION_STATE_"
        )
        message = f"{name} {state.lower()} (execution {execution.execution_id})"
        if execution.error:
            message += f": {execution.error}"
        await self.journal.decide(
            "healing.completed" if success else "healing.failed",
            name,
            workflow=name,
            execution_id=execution.execution_id,
            message=message,
        )
        return WorkflowHeal(name, execution.execution_id, success, message, findings)
