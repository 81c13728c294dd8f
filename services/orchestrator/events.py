"""Events the orchestrator announces on the bus, and where they are published.

Events are written to the orchestrator's outbox in the same transaction as the transition
they announce; `OutboxRelay` moves them to the event bus with `EventBusPublisher`
(`publisher_for`), retrying with backoff while the bus is down.

The final events (`workflow.completed`, `workflow.rolled_back`) anchor the execution's
signed proof: they carry the chain head, the final state, the record count, the
signature (standard base64, as in GetExecutionProof's JSON) and the signing key id, which
is everything `proof.signing_message` covers. The immutable log kernel subscribes to them,
so each execution proof's head is committed to the Merkle log.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping

from services.common.bus_client import EventBusPublisher
from services.orchestrator.model import Execution, JsonDict, StepRun
from services.orchestrator.writer import Event

STARTED = "workflow.started"
STEP_COMPLETED = "workflow.step.completed"
STEP_FAILED = "workflow.step.failed"
COMPLETED = "workflow.completed"
ROLLED_BACK = "workflow.rolled_back"
COMPENSATION_RETRYING = "workflow.compensation.retrying"
COMPENSATION_ABANDONED = "workflow.compensation.abandoned"


def event(event_type: str, data: JsonDict, ex: Execution, step_id: str = "") -> Event:
    """An outbox event about an execution (or one of its steps).

    Its id is derived from what it announces ("<execution_id>[:<step_id>]:<type>", and
    ":<round>" once the compensation was retried), so an event re-created when an
    execution resumes is a duplicate the bus suppresses, while the end of a later
    compensation round is a new event.
    """
    scope = f"{ex.execution_id}:{step_id}" if step_id else ex.execution_id
    suffix = f":{ex.compensation_rounds}" if ex.compensation_rounds else ""
    return (event_type, data, ex.execution_id, f"{scope}:{event_type}{suffix}")


def _base(ex: Execution) -> JsonDict:
    return {
        "execution_id": ex.execution_id,
        "workflow_id": ex.workflow_id,
        "workflow_name": ex.workflow_name,
    }


def started(ex: Execution) -> JsonDict:
    """Payload of workflow.started."""
    return {**_base(ex), "steps": len(ex.steps)}


def step_completed(ex: Execution, run: StepRun) -> JsonDict:
    """Payload of workflow.step.completed."""
    return {
        **_base(ex),
        "step_id": run.step_id,
        "domain_id": run.domain_id,
        "action": run.action,
        "attempts": run.attempts,
    }


def step_failed(ex: Execution, run: StepRun) -> JsonDict:
    """Payload of workflow.step.failed."""
    return {**step_completed(ex, run), "error": run.error}


def _anchor(ex: Execution, head_hash: str, key_id: str) -> JsonDict:
    """The signed proof's head: what `proof.signing_message` covers, and the signature."""
    return {
        "final_state": ex.state.value,
        "proof_head": head_hash,
        "proof_records": len(ex.records),
        "proof_signature": base64.b64encode(ex.signature).decode(),
        "proof_key_id": key_id,
    }


def completed(ex: Execution, head_hash: str, key_id: str) -> JsonDict:
    """Payload of workflow.completed."""
    return {
        **_base(ex),
        **_anchor(ex, head_hash, key_id),
        "duration_ms": round((ex.finished_at - ex.created_at) * 1000, 3),
    }


def rolled_back(ex: Execution, head_hash: str, key_id: str) -> JsonDict:
    """Payload of workflow.rolled_back (also sent when a compensation failed)."""
    return {
        **_base(ex),
        **_anchor(ex, head_hash, key_id),
        "state": ex.state.value,
        "error": ex.error,
        "compensated": list(ex.compensation_order),
        "compensation_failed": [
            sid for sid, run in ex.steps.items() if run.state.value == "COMPENSATION_FAILED"
        ],
        "compensation_round": ex.compensation_rounds,
        "next_compensation_at": ex.next_compensation_at,
    }


def compensation_retrying(ex: Execution, operator: str) -> JsonDict:
    """Payload of workflow.compensation.retrying: round n of the rollback starts."""
    return {
        **_base(ex),
        "round": ex.compensation_rounds,
        "requested_by": operator,
        "steps": [sid for sid, run in ex.steps.items() if run.state.value == "COMPENSATING"],
    }


def compensation_abandoned(ex: Execution) -> JsonDict:
    """Payload of workflow.compensation.abandoned: an operator gave up on the rollback."""
    return {
        **_base(ex),
        "abandoned_by": ex.abandoned_by,
        "reason": ex.abandon_reason,
        "rounds": ex.compensation_rounds,
        "compensation_failed": [
            sid for sid, run in ex.steps.items() if run.state.value == "COMPENSATION_FAILED"
        ],
    }


def publisher_for(env: Mapping[str, str]) -> EventBusPublisher:
    """The publisher events go to: the event bus at `GRACE_EVENTBUS_ADDR`."""
    return EventBusPublisher.from_env(env)
