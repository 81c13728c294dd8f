"""Events the orchestrator announces on the bus, and where they are published.

Events are written to the orchestrator's outbox in the same transaction as the transition
they announce; `OutboxRelay` moves them to a `Publisher`. `publisher_for` is the one place
that picks the publisher: the event bus client (`EventBusPublisher`, built on the event
bus branch) is wired there when it is available; until then it returns None and events
wait in the outbox table until a publisher is configured.
"""

from __future__ import annotations

from collections.abc import Mapping

from services.common.outbox import Publisher
from services.orchestrator.model import Execution, JsonDict, StepRun

STARTED = "workflow.started"
STEP_COMPLETED = "workflow.step.completed"
STEP_FAILED = "workflow.step.failed"
COMPLETED = "workflow.completed"
ROLLED_BACK = "workflow.rolled_back"


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


def completed(ex: Execution, head_hash: str) -> JsonDict:
    """Payload of workflow.completed."""
    return {
        **_base(ex),
        "duration_ms": round((ex.finished_at - ex.created_at) * 1000, 3),
        "proof_head": head_hash,
    }


def rolled_back(ex: Execution) -> JsonDict:
    """Payload of workflow.rolled_back (also sent when a compensation failed)."""
    return {
        **_base(ex),
        "state": ex.state.value,
        "error": ex.error,
        "compensated": list(ex.compensation_order),
        "compensation_failed": [
            sid for sid, run in ex.steps.items() if run.state.value == "COMPENSATION_FAILED"
        ],
    }


def publisher_for(env: Mapping[str, str]) -> Publisher | None:
    """The publisher events go to, or None when no event bus client is available yet.

    This is the factory to wire the event bus publisher into (for example
    `EventBusPublisher(peer_address(env, "eventbus"))`); returning None keeps the events
    in the outbox table, durable, until a publisher is wired.
    """
    del env
    return None
