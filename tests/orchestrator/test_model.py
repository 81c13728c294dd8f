"""Executions in their compact form: what the orchestrator keeps of an ended one."""

from __future__ import annotations

import enum
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.orchestrator import proof
from services.orchestrator.model import Execution, ExecutionState, StepRun, StepState


def ended_execution(text: str = "Run 1 went well. " * 8, n: int = 1) -> Execution:
    """A SUCCEEDED 3-step execution like the soak's document workflow: each step's input
    takes over the workflow input and the previous step's input and output."""
    execution_id = f"ex_{n:024x}"
    document = {"document": {"title": f"soak {n}", "text": text}}
    outputs: list[dict[str, Any]] = [
        {"document_id": f"doc_{n}", "title": f"soak {n}", "text": text, "statistics": {"w": 24.0}},
        {"summary": text[:17], "keywords": [{"word": "run", "count": 8.0}], "score": 0.0},
        {"contribution_id": f"c_{n}", "confidence": 0.6},
    ]
    steps: dict[str, StepRun] = {}
    records: list[dict[str, Any]] = []
    previous: StepRun | None = None
    for index, (step_id, output) in enumerate(
        zip(["ingest", "analyze", "store"], outputs, strict=True)
    ):
        step_input = dict(document)
        if previous is not None:
            step_input.update(previous.input or {})
            step_input.update(previous.output or {})
        run = StepRun(
            step_id,
            step_id,
            StepState.SUCCEEDED,
            domain_id=f"domain_{index}",
            attempts=1,
            input=step_input,
            output=output,
            started_at=1_700_000_000.25 + index,
            finished_at=1_700_000_000.5 + index,
            address="127.0.0.1:8201",
        )
        proof.append_record(
            records,
            execution_id,
            step_id=step_id,
            domain_id=run.domain_id,
            action=step_id,
            kind="execute",
            attempt=1,
            outcome="succeeded",
            input_sha256=proof.digest(step_input),
            output_sha256=proof.digest(output),
            error="",
            started_at_us=1_700_000_000_250_000 + index,
            finished_at_us=1_700_000_000_500_000 + index,
        )
        steps[step_id] = previous = run
    return Execution(
        execution_id=execution_id,
        workflow_id="wf_soak",
        workflow_name="soak_document",
        input=document,
        steps=steps,
        created_at=1_700_000_000.0,
        state=ExecutionState.SUCCEEDED,
        updated_at=1_700_000_003.0,
        finished_at=1_700_000_003.0,
        completion_order=["ingest", "analyze", "store"],
        records=records,
        signature=bytes(range(64)),
    )


def test_a_compact_execution_reads_back_equal_and_a_fraction_of_its_json() -> None:
    execution = ended_execution()
    compact = execution.to_compact()
    assert Execution.from_compact(compact) == execution
    assert len(compact) < len(json.dumps(execution.to_json())) / 2


def test_each_read_of_a_compact_execution_is_a_new_copy() -> None:
    compact = ended_execution().to_compact()
    first = Execution.from_compact(compact)
    first.steps["store"].output = {"changed": True}
    first.records.clear()
    assert Execution.from_compact(compact) == ended_execution()


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(
    payload=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    output=st.none() | st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    error=st.text(),
)
def test_any_json_payload_survives_the_compact_form(
    payload: dict[str, Any], output: dict[str, Any] | None, error: str
) -> None:
    execution = ended_execution()
    execution.input = payload
    execution.steps["ingest"].output = output
    execution.steps["analyze"].input = payload
    execution.error = error
    back = Execution.from_compact(execution.to_compact())
    # JSON's NaN is not equal to itself: compare what the store would write.
    assert json.dumps(back.to_json()) == json.dumps(execution.to_json())


class Label(enum.StrEnum):
    HIGH = "high"


def test_a_value_marshal_cannot_write_is_refused_with_a_value_error() -> None:
    execution = ended_execution()
    execution.input = {"risk": Label.HIGH}  # JSON writes it as "high"; marshal refuses
    with pytest.raises(ValueError, match="unmarshallable"):
        execution.to_compact()
