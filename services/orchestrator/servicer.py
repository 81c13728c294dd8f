"""gRPC adapter of the orchestrator: proto in, core call, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, TypeAlias

import grpc

from grace.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from services.common.auth import acting_for
from services.common.domain_router import from_struct, to_struct
from services.common.pagination import encoded_size
from services.common.timestamps import from_duration, to_duration, to_timestamp
from services.common.validation import require_struct_size
from services.orchestrator.definition import RetryDraft, StepDraft
from services.orchestrator.engine import Orchestrator
from services.orchestrator.model import Execution, ExecutionState, JsonDict, StepState, WorkflowSpec
from services.orchestrator.proof import attestation_message, verify_proof

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
pb = orchestrator_pb2

_EXECUTION_STATE = {
    s: pb.ExecutionState.Value(f"EXECUTION_STATE_{s.value}") for s in ExecutionState
}
_EXECUTION_STATE_FROM = {v: k for k, v in _EXECUTION_STATE.items()}
_STEP_STATE = {s: pb.StepState.Value(f"STEP_STATE_{s.value}") for s in StepState}


def _draft(index: int, step: pb.Step) -> StepDraft:
    retry = None
    if step.HasField("retry"):
        r = step.retry
        retry = RetryDraft(
            max_attempts=r.max_attempts,
            initial_backoff_s=from_duration(r.initial_backoff)
            if r.HasField("initial_backoff")
            else None,
            multiplier=r.backoff_multiplier,
            max_backoff_s=from_duration(r.max_backoff) if r.HasField("max_backoff") else None,
            unavailable_window_s=from_duration(r.unavailable_window)
            if r.HasField("unavailable_window")
            else None,
        )
    require_struct_size(f"steps[{index}].data", step.data)
    return StepDraft(
        action=step.action,
        id=step.id,
        domain_id=step.domain_id,
        capability=step.capability,
        data=from_struct(step.data),
        depends_on=tuple(step.depends_on),
        timeout_s=from_duration(step.timeout) if step.HasField("timeout") else None,
        retry=retry,
        compensation_action=step.compensation.action,
        compensation_skip=step.compensation.skip,
    )


def workflow_to_proto(spec: WorkflowSpec, executions: int = 0) -> pb.Workflow:
    """The wire form of a workflow."""
    return pb.Workflow(
        workflow_id=spec.workflow_id,
        name=spec.name,
        description=spec.description,
        steps=[
            pb.Step(
                id=s.id,
                domain_id=s.domain_id,
                capability=s.capability,
                action=s.action,
                data=to_struct(s.data),
                depends_on=s.depends_on,
                timeout=to_duration(s.timeout_s),
                retry=pb.RetryPolicy(
                    max_attempts=s.retry.max_attempts,
                    initial_backoff=to_duration(s.retry.initial_backoff_s),
                    backoff_multiplier=s.retry.multiplier,
                    max_backoff=to_duration(s.retry.max_backoff_s),
                    unavailable_window=to_duration(s.retry.unavailable_window_s),
                ),
                compensation=pb.Compensation(
                    action=s.compensation_action, skip=s.compensation_skip
                ),
            )
            for s in spec.steps
        ],
        created_at=to_timestamp(spec.created_at),
        execution_count=executions,
    )


def snapshot_to_proto(snap: JsonDict) -> pb.Execution:
    """The wire form of an execution snapshot."""
    return execution_to_proto(Execution.from_json(snap))


def execution_to_proto(ex: Execution) -> pb.Execution:
    """The wire form of an execution."""
    message = pb.Execution(
        execution_id=ex.execution_id,
        workflow_id=ex.workflow_id,
        workflow_name=ex.workflow_name,
        state=_EXECUTION_STATE[ex.state],
        input=to_struct(ex.input),
        error=ex.error,
        cancel_requested=ex.cancel_requested,
        created_at=to_timestamp(ex.created_at),
        updated_at=to_timestamp(ex.updated_at),
        finished_at=to_timestamp(ex.finished_at),
        compensation_order=ex.compensation_order,
        compensation_rounds=ex.compensation_rounds,
    )
    if ex.next_compensation_at:
        message.next_compensation_at.CopyFrom(to_timestamp(ex.next_compensation_at))
    if ex.abandoned_at:
        message.abandonment.CopyFrom(
            pb.CompensationAbandonment(
                operator=ex.abandoned_by,
                reason=ex.abandon_reason,
                abandoned_at=to_timestamp(ex.abandoned_at),
            )
        )
    if ex.state == ExecutionState.SUCCEEDED:
        message.output.update(ex.output())
    for run in ex.steps.values():
        step = message.steps.add(
            step_id=run.step_id,
            state=_STEP_STATE[run.state],
            domain_id=run.domain_id,
            action=run.action,
            attempts=run.attempts,
            error=run.error,
            started_at=to_timestamp(run.started_at),
            finished_at=to_timestamp(run.finished_at),
            compensation_error=run.compensation_error,
            address=run.address,
        )
        if run.input is not None:
            step.input.update(run.input)
        if run.output is not None:
            step.output.update(run.output)
    return message


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    """Serves `grace.orchestrator.v1.OrchestratorService` over an `Orchestrator` core."""

    def __init__(
        self,
        core: Callable[[], Orchestrator],
        attestor: Callable[[bytes], tuple[str, bytes]] | None = None,
    ) -> None:
        self._get_core = core
        self._attestor = attestor

    @property
    def _core(self) -> Orchestrator:
        return self._get_core()

    async def CreateWorkflow(
        self, request: pb.CreateWorkflowRequest, context: Context
    ) -> pb.CreateWorkflowResponse:
        drafts = [_draft(i, s) for i, s in enumerate(request.steps)]
        spec, checked = await self._core.create_workflow(
            request.name, request.description, drafts, request.request_id
        )
        return pb.CreateWorkflowResponse(
            workflow=workflow_to_proto(spec),
            workflow_id=spec.workflow_id,
            domains_checked=checked,
        )

    async def GetWorkflow(
        self, request: pb.GetWorkflowRequest, context: Context
    ) -> pb.GetWorkflowResponse:
        spec, count = await self._core.get_workflow(request.workflow_id)
        return pb.GetWorkflowResponse(workflow=workflow_to_proto(spec, count))

    async def ListWorkflows(
        self, request: pb.ListWorkflowsRequest, context: Context
    ) -> pb.ListWorkflowsResponse:
        page, token = await self._core.list_workflows(
            request.page_size,
            request.page_token,
            request.name,
            size_of=lambda spec: encoded_size(workflow_to_proto(spec, 0)),
        )
        return pb.ListWorkflowsResponse(
            workflows=[workflow_to_proto(s, n) for s, n in page], next_page_token=token
        )

    async def ExecuteWorkflow(
        self, request: pb.ExecuteWorkflowRequest, context: Context
    ) -> pb.ExecuteWorkflowResponse:
        require_struct_size("input", request.input)
        ex = await self._core.execute(
            request.workflow_id,
            from_struct(request.input),
            wait=request.wait,
            request_id=request.request_id,
        )
        return pb.ExecuteWorkflowResponse(
            execution=execution_to_proto(ex), execution_id=ex.execution_id
        )

    async def GetExecution(
        self, request: pb.GetExecutionRequest, context: Context
    ) -> pb.GetExecutionResponse:
        ex = await self._core.get_execution(request.execution_id)
        return pb.GetExecutionResponse(execution=execution_to_proto(ex))

    async def ListExecutions(
        self, request: pb.ListExecutionsRequest, context: Context
    ) -> pb.ListExecutionsResponse:
        page, token = await self._core.list_executions(
            request.page_size,
            request.page_token,
            request.workflow_id,
            _EXECUTION_STATE_FROM.get(request.state),
            size_of=lambda execution: encoded_size(execution_to_proto(execution)),
        )
        return pb.ListExecutionsResponse(
            executions=[execution_to_proto(e) for e in page], next_page_token=token
        )

    async def CancelExecution(
        self, request: pb.CancelExecutionRequest, context: Context
    ) -> pb.CancelExecutionResponse:
        ex = await self._core.cancel(request.execution_id, request.reason)
        return pb.CancelExecutionResponse(execution=execution_to_proto(ex))

    async def WatchExecution(
        self, request: pb.WatchExecutionRequest, context: Context
    ) -> AsyncIterator[pb.WatchExecutionResponse]:
        async for snapshot, label in self._core.watch(request.execution_id):
            yield pb.WatchExecutionResponse(execution=snapshot_to_proto(snapshot), transition=label)

    async def GetExecutionProof(
        self, request: pb.GetExecutionProofRequest, context: Context
    ) -> pb.GetExecutionProofResponse:
        found = await self._core.proof(request.execution_id)
        ex = found.execution
        message = pb.ExecutionProof(
            execution_id=ex.execution_id,
            workflow_id=ex.workflow_id,
            final_state=ex.state.value,
            records=[pb.ProofRecord(**r) for r in ex.records],
            head_hash=found.head_hash,
            signature=ex.signature,
            public_key=found.public_key,
            key_id=found.key_id,
        )
        if self._attestor is not None:
            # Binds the proof's key and head to this orchestrator's Grace identity.
            message.signer_certificate_pem, message.certificate_signature = self._attestor(
                attestation_message(message)
            )
        return pb.GetExecutionProofResponse(proof=message)

    async def VerifyProof(
        self, request: pb.VerifyProofRequest, context: Context
    ) -> pb.VerifyProofResponse:
        # Without a pinned key, origin is checked against this orchestrator's own key: the
        # key inside a proof proves nothing, a forger signs with a key of their own.
        verdict = verify_proof(request.proof, request.public_key or self._core.signer.public_key)
        return pb.VerifyProofResponse(
            valid=verdict.valid,
            first_invalid_record=verdict.first_invalid_record,
            reason=verdict.reason,
        )

    async def GetStats(self, request: pb.GetStatsRequest, context: Context) -> pb.GetStatsResponse:
        stats = self._core.stats
        return pb.GetStatsResponse(
            total_workflows=stats.total_workflows,
            total_executions=sum(stats.by_state.values()),
            executions_by_state=stats.by_state,
            step_attempts=stats.step_attempts,
            step_retries=stats.step_retries,
            compensations=stats.compensations,
            executions_resumed=stats.resumed,
            mean_execution_ms=stats.total_duration_s / stats.ended * 1000 if stats.ended else 0.0,
            running_executions=self._core.running,
        )

    async def ListCompensationFailed(
        self, request: pb.ListCompensationFailedRequest, context: Context
    ) -> pb.ListCompensationFailedResponse:
        page, token = await self._core.rounds.list(
            request.page_size, request.page_token, request.include_abandoned
        )
        return pb.ListCompensationFailedResponse(
            executions=[execution_to_proto(e) for e in page], next_page_token=token
        )

    async def RetryCompensation(
        self, request: pb.RetryCompensationRequest, context: Context
    ) -> pb.RetryCompensationResponse:
        ex = await self._core.rounds.retry(request.execution_id, acting_for(request.operator))
        return pb.RetryCompensationResponse(execution=execution_to_proto(ex))

    async def AbandonCompensation(
        self, request: pb.AbandonCompensationRequest, context: Context
    ) -> pb.AbandonCompensationResponse:
        ex = await self._core.rounds.abandon(
            request.execution_id, acting_for(request.operator), request.reason
        )
        return pb.AbandonCompensationResponse(execution=execution_to_proto(ex))
