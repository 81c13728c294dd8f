"""The orchestrator end to end over gRPC, against fake domains in a real registry."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from grace.domain.v1 import domain_pb2
from grace.orchestrator.v1 import orchestrator_pb2 as pb
from grace.orchestrator.v1 import orchestrator_pb2_grpc
from services.common.domain_router import from_struct
from services.orchestrator.definition import StepDraft
from services.orchestrator.server import OrchestratorServer
from services.orchestrator.store import OrchestratorStore
from tests.orchestrator.conftest import GrpcFailure, World, orchestrator_config
from tests.support import eventually, free_port, serving

Stub = orchestrator_pb2_grpc.OrchestratorServiceStub

SEED_BODY = {
    "name": "analyze_code",
    "steps": [
        {"domain_id": "memory_domain", "action": "search", "data": {}},
        {"domain_id": "ai_domain", "action": "analyze", "data": {}, "depends_on": ["step_1"]},
    ],
}


def workflow(body: dict[str, Any]) -> pb.CreateWorkflowRequest:
    return json_format.ParseDict(body, pb.CreateWorkflowRequest())


def fast_retry(attempts: int = 3, unavailable_window: str = "0s") -> dict[str, Any]:
    return {
        "max_attempts": attempts,
        "initial_backoff": "0.05s",
        "max_backoff": "0.2s",
        "unavailable_window": unavailable_window,
    }


async def run(
    stub: Stub, body: dict[str, Any], payload: dict[str, Any] | None = None
) -> pb.Execution:
    created = await stub.CreateWorkflow(workflow(body))
    request = pb.ExecuteWorkflowRequest(workflow_id=created.workflow_id, wait=True)
    if payload:
        request.input.update(payload)
    return (await stub.ExecuteWorkflow(request, timeout=30)).execution


async def test_the_seed_body_creates_a_workflow_whose_steps_are_numbered(
    world: World, orchestrator: Stub
) -> None:
    await world.add_domain("memory_domain")
    await world.add_domain("ai_domain")
    created = await orchestrator.CreateWorkflow(workflow(SEED_BODY))
    assert created.domains_checked
    assert [s.id for s in created.workflow.steps] == ["step_1", "step_2"]
    fetched = await orchestrator.GetWorkflow(pb.GetWorkflowRequest(workflow_id=created.workflow_id))
    assert fetched.workflow.name == "analyze_code"
    listed = await orchestrator.ListWorkflows(pb.ListWorkflowsRequest())
    assert [w.workflow_id for w in listed.workflows] == [created.workflow_id]


async def test_steps_run_in_dependency_order_and_outputs_flow_into_later_steps(
    world: World, orchestrator: Stub
) -> None:
    data = await world.add_domain("data_domain")
    await world.add_domain("ai_domain")

    async def ingest(request: domain_pb2.ExecuteRequest) -> dict[str, Any]:
        return {"document_id": "doc-1", "words": len(from_struct(request.input)["text"].split())}

    data.actions["ingest"] = ingest
    body = {
        "name": "process_document",
        "steps": [
            {"domain_id": "data_domain", "action": "ingest", "data": {"text": "${input.document}"}},
            {
                "domain_id": "ai_domain",
                "action": "analyze",
                "depends_on": ["step_1"],
                "data": {
                    "id": {"$ref": "steps.step_1.output.document_id"},
                    "note": "doc ${steps.step_1.output.document_id} has "
                    "${steps.step_1.output.words} words",
                },
            },
            {"domain_id": "ai_domain", "action": "summarize", "depends_on": ["step_2"]},
        ],
    }
    ex = await run(orchestrator, body, {"document": "one two three"})
    assert ex.state == pb.EXECUTION_STATE_SUCCEEDED
    assert [c[3] for c in world.journal.calls] == ["step_1", "step_2", "step_3"]
    step2 = from_struct(ex.steps[1].input)
    assert step2 == {"id": "doc-1", "note": "doc doc-1 has 3 words"}
    # A step without data gets the workflow input merged with its dependencies' input and output.
    step3 = from_struct(ex.steps[2].input)
    assert step3["document"] == "one two three"
    assert step3["echo"] == step2
    assert from_struct(ex.output)["step_1"] == {"document_id": "doc-1", "words": 3}


async def test_independent_steps_really_run_at_the_same_time(
    world: World, orchestrator: Stub
) -> None:
    domain = await world.add_domain("worker")

    async def slow(request: domain_pb2.ExecuteRequest) -> dict[str, Any]:
        await asyncio.sleep(0.3)
        return {}

    domain.actions["slow"] = slow
    body = {
        "name": "fan_out",
        "steps": [{"domain_id": "worker", "action": "slow"} for _ in range(4)],
    }
    ex = await run(orchestrator, body)
    assert ex.state == pb.EXECUTION_STATE_SUCCEEDED
    spans = list(world.journal.spans.values())
    latest_start = max(s for s, _ in spans)
    earliest_end = min(e for _, e in spans)
    assert latest_start < earliest_end, "the four steps did not overlap"


async def test_a_failing_step_is_retried_with_backoff_then_succeeds(
    world: World, orchestrator: Stub
) -> None:
    domain = await world.add_domain("flaky")
    failures = 2
    times: list[float] = []

    async def flaky(request: domain_pb2.ExecuteRequest) -> dict[str, Any]:
        nonlocal failures
        times.append(asyncio.get_running_loop().time())
        if failures:
            failures -= 1
            raise GrpcFailure(grpc.StatusCode.UNAVAILABLE, "not yet")
        return {"ok": True}

    domain.actions["work"] = flaky
    body = {
        "name": "retry",
        "steps": [
            {
                "domain_id": "flaky",
                "action": "work",
                "retry": {"max_attempts": 3, "initial_backoff": "0.1s", "backoff_multiplier": 2},
            }
        ],
    }
    ex = await run(orchestrator, body)
    assert ex.state == pb.EXECUTION_STATE_SUCCEEDED
    assert ex.steps[0].attempts == 3
    assert times[1] - times[0] >= 0.09
    assert times[2] - times[1] >= 0.19
    key = f"{ex.execution_id}/step_1"
    # UNAVAILABLE from the domain itself is a transport-level answer: the key was retried.
    assert domain.attempts[key] == [1, 2, 3]
    stats = await orchestrator.GetStats(pb.GetStatsRequest())
    assert stats.step_retries == 2


async def test_a_step_that_exceeds_its_timeout_fails_and_rolls_back_the_others(
    world: World, orchestrator: Stub
) -> None:
    domain = await world.add_domain("slow_domain")

    async def hang(request: domain_pb2.ExecuteRequest) -> dict[str, Any]:
        await asyncio.sleep(5)
        return {}

    domain.actions["hang"] = hang
    body = {
        "name": "timeout",
        "steps": [
            {"domain_id": "slow_domain", "action": "first"},
            {
                "domain_id": "slow_domain",
                "action": "hang",
                "timeout": "0.2s",
                "retry": fast_retry(2),
                "depends_on": ["step_1"],
            },
        ],
    }
    ex = await run(orchestrator, body)
    assert ex.state == pb.EXECUTION_STATE_ROLLED_BACK
    assert ex.steps[1].state == pb.STEP_STATE_FAILED
    assert "DEADLINE_EXCEEDED" in ex.steps[1].error
    assert ex.steps[1].attempts == 2
    assert ex.steps[0].state == pb.STEP_STATE_COMPENSATED


async def test_completed_steps_are_compensated_in_reverse_completion_order(
    world: World, orchestrator: Stub
) -> None:
    domain = await world.add_domain("d")

    async def fail(request: domain_pb2.ExecuteRequest) -> dict[str, Any]:
        raise GrpcFailure(grpc.StatusCode.FAILED_PRECONDITION, "cannot do it")

    domain.actions["fail"] = fail
    body = {
        "name": "saga",
        "steps": [
            {"domain_id": "d", "action": "a"},
            {"domain_id": "d", "action": "b", "depends_on": ["step_1"]},
            {"domain_id": "d", "action": "c", "depends_on": ["step_2"]},
            {"domain_id": "d", "action": "fail", "depends_on": ["step_3"]},
            {"domain_id": "d", "action": "never", "depends_on": ["step_4"]},
        ],
    }
    ex = await run(orchestrator, body)
    assert ex.state == pb.EXECUTION_STATE_ROLLED_BACK
    assert list(ex.compensation_order) == ["step_3", "step_2", "step_1"]
    compensations = [c for c in world.journal.calls if c[0] == "compensate"]
    assert [c[3] for c in compensations] == ["step_3", "step_2", "step_1"]
    assert ex.steps[3].attempts == 1, "a permanent error is not retried"
    assert ex.steps[4].state == pb.STEP_STATE_SKIPPED
    assert "step step_4 failed" in ex.error
    types = [e.event_type for e in world.events]
    await eventually(lambda: _has(world, "workflow.rolled_back"), within_s=10)
    types = [e.event_type for e in world.events]
    assert types.count("workflow.step.completed") == 3
    assert "workflow.step.failed" in types


async def _has(world: World, event_type: str) -> bool:
    return any(e.event_type == event_type for e in world.events)


async def test_a_failing_compensation_ends_compensation_failed_and_is_recorded(
    world: World, orchestrator: Stub
) -> None:
    domain = await world.add_domain("d")

    async def fail(request: Any) -> dict[str, Any]:
        raise GrpcFailure(grpc.StatusCode.INTERNAL, "undo broke")

    domain.actions["boom"] = fail
    domain.compensations["b"] = fail
    body = {
        "name": "bad_undo",
        "steps": [
            {"domain_id": "d", "action": "a"},
            {"domain_id": "d", "action": "b", "depends_on": ["step_1"], "retry": fast_retry(2)},
            {"domain_id": "d", "action": "boom", "depends_on": ["step_2"], "retry": fast_retry(1)},
        ],
    }
    ex = await run(orchestrator, body)
    assert ex.state == pb.EXECUTION_STATE_COMPENSATION_FAILED
    assert ex.steps[1].state == pb.STEP_STATE_COMPENSATION_FAILED
    assert "undo broke" in ex.steps[1].compensation_error
    # The rollback went on past the failure: step_1 was still undone.
    assert ex.steps[0].state == pb.STEP_STATE_COMPENSATED
    proof = (
        await orchestrator.GetExecutionProof(
            pb.GetExecutionProofRequest(execution_id=ex.execution_id)
        )
    ).proof
    failed = [r for r in proof.records if r.kind == "compensate" and r.outcome == "failed"]
    assert [r.attempt for r in failed] == [1, 2]


async def test_cancel_lets_the_running_step_finish_then_compensates(
    world: World, orchestrator: Stub
) -> None:
    domain = await world.add_domain("d")
    release = asyncio.Event()

    async def wait_for_release(request: domain_pb2.ExecuteRequest) -> dict[str, Any]:
        await release.wait()
        return {"done": True}

    domain.actions["block"] = wait_for_release
    body = {
        "name": "cancel_me",
        "steps": [
            {"domain_id": "d", "action": "a"},
            {"domain_id": "d", "action": "block", "depends_on": ["step_1"]},
            {"domain_id": "d", "action": "c", "depends_on": ["step_2"]},
        ],
    }
    created = await orchestrator.CreateWorkflow(workflow(body))
    started = await orchestrator.ExecuteWorkflow(
        pb.ExecuteWorkflowRequest(workflow_id=created.workflow_id)
    )
    assert started.execution.state == pb.EXECUTION_STATE_RUNNING
    execution_id = started.execution_id

    async def blocked() -> bool:
        return any(c[2] == "block" for c in world.journal.calls)

    await eventually(blocked, within_s=10)
    watch = orchestrator.WatchExecution(pb.WatchExecutionRequest(execution_id=execution_id))
    cancelled = await orchestrator.CancelExecution(
        pb.CancelExecutionRequest(execution_id=execution_id, reason="user changed their mind")
    )
    assert cancelled.execution.cancel_requested
    release.set()
    transitions = [m async for m in watch]
    assert transitions[-1].execution.state == pb.EXECUTION_STATE_ROLLED_BACK
    final = (
        await orchestrator.GetExecution(pb.GetExecutionRequest(execution_id=execution_id))
    ).execution
    assert list(final.compensation_order) == ["step_2", "step_1"]
    assert final.steps[2].state == pb.STEP_STATE_SKIPPED
    assert "user changed their mind" in final.error
    rolled = await orchestrator.ListExecutions(
        pb.ListExecutionsRequest(state=pb.EXECUTION_STATE_ROLLED_BACK)
    )
    assert [e.execution_id for e in rolled.executions] == [execution_id]
    none_ok = await orchestrator.ListExecutions(
        pb.ListExecutionsRequest(state=pb.EXECUTION_STATE_SUCCEEDED)
    )
    assert not none_ok.executions


async def test_capability_routes_to_the_best_domain_and_falls_back_when_it_is_down(
    world: World, orchestrator: Stub
) -> None:
    await world.add_domain("alpha", ["ocr"])
    await world.add_domain("beta", ["ocr", "x", "y", "z"])
    # A third candidate is registered at an address where nothing listens: it is ranked
    # first (it offers only "ocr") and must be skipped as unavailable.
    await world.register("ghost", 1, ["ocr"])
    ex = await run(
        orchestrator, {"name": "cap", "steps": [{"capability": "ocr", "action": "read"}]}
    )
    assert ex.state == pb.EXECUTION_STATE_SUCCEEDED
    assert ex.steps[0].domain_id in ("alpha", "beta")
    assert ex.steps[0].domain_id == "alpha", "alpha (1 capability) outranks beta (4)"


async def test_paginated_lists_walk_every_execution(world: World, orchestrator: Stub) -> None:
    await world.add_domain("d")
    created = await orchestrator.CreateWorkflow(
        workflow({"name": "tiny", "steps": [{"domain_id": "d", "action": "a"}]})
    )
    ids = set()
    for _ in range(5):
        r = await orchestrator.ExecuteWorkflow(
            pb.ExecuteWorkflowRequest(workflow_id=created.workflow_id, wait=True)
        )
        ids.add(r.execution_id)
    seen: list[str] = []
    token = ""
    while True:
        page = await orchestrator.ListExecutions(
            pb.ListExecutionsRequest(page_size=2, page_token=token, workflow_id=created.workflow_id)
        )
        seen += [e.execution_id for e in page.executions]
        token = page.next_page_token
        if not token:
            break
    assert set(seen) == ids
    assert len(seen) == 5
    stats = await orchestrator.GetStats(pb.GetStatsRequest())
    assert stats.executions_by_state["SUCCEEDED"] == 5
    assert stats.total_workflows == 1
    got = await orchestrator.GetWorkflow(pb.GetWorkflowRequest(workflow_id=created.workflow_id))
    assert got.workflow.execution_count == 5


async def test_a_repeated_request_id_returns_the_same_execution(
    world: World, orchestrator: Stub
) -> None:
    domain = await world.add_domain("d")
    created = await orchestrator.CreateWorkflow(
        workflow({"name": "once", "steps": [{"domain_id": "d", "action": "a"}], "request_id": "r1"})
    )
    again = await orchestrator.CreateWorkflow(
        workflow({"name": "once", "steps": [{"domain_id": "d", "action": "a"}], "request_id": "r1"})
    )
    assert again.workflow_id == created.workflow_id
    first = await orchestrator.ExecuteWorkflow(
        pb.ExecuteWorkflowRequest(workflow_id=created.workflow_id, request_id="go", wait=True)
    )
    second = await orchestrator.ExecuteWorkflow(
        pb.ExecuteWorkflowRequest(workflow_id=created.workflow_id, request_id="go", wait=True)
    )
    assert first.execution_id == second.execution_id
    assert sum(domain.runs.values()) == 1


async def test_by_default_a_step_rides_out_a_domain_that_is_down_for_seconds(
    world: World, orchestrator: Stub
) -> None:
    # The domain is registered, but its process is (re)starting: nothing listens yet.
    port = free_port()
    await world.register("late", port, [])
    created = await orchestrator.CreateWorkflow(
        workflow({"name": "late", "steps": [{"domain_id": "late", "action": "a"}]})
    )
    request = pb.ExecuteWorkflowRequest(workflow_id=created.workflow_id, wait=True)

    async def execute() -> pb.ExecuteWorkflowResponse:
        return await orchestrator.ExecuteWorkflow(request, timeout=60)

    running = asyncio.create_task(execute())
    await asyncio.sleep(4.0)
    assert not running.done()
    domain = await world.add_domain("late", port=port)
    ex = (await running).execution
    assert ex.state == pb.EXECUTION_STATE_SUCCEEDED
    assert ex.steps[0].attempts > 3  # More than the default max_attempts.
    assert sum(domain.runs.values()) == 1


async def test_a_domain_down_longer_than_the_window_rolls_the_step_back(
    world: World, orchestrator: Stub
) -> None:
    await world.register("gone", free_port(), [])
    body = {
        "name": "gone",
        "steps": [
            {"domain_id": "gone", "action": "a", "retry": fast_retry(2, unavailable_window="1s")}
        ],
    }
    ex = await run(orchestrator, body)
    assert ex.state == pb.EXECUTION_STATE_ROLLED_BACK
    assert "unavailable" in ex.steps[0].error
    # 2 attempts by max_attempts, then more while they start within 1 s of the first.
    assert 3 <= ex.steps[0].attempts <= 2 + 1 / 0.05


async def test_concurrent_calls_with_one_request_id_start_one_runner(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    domain = await world.add_domain("d")

    async def slow(request: domain_pb2.ExecuteRequest) -> dict[str, Any]:
        await asyncio.sleep(0.3)
        return {"done": True}

    domain.actions["a"] = slow
    service = OrchestratorServer(orchestrator_config(world.tmp_path / "o", world.registry_address))
    async with serving(service.config.server, service):
        core = service.core
        assert core is not None
        spec, _ = await core.create_workflow("once", "", [StepDraft(action="a", domain_id="d")])
        read = core.store.get_execution

        async def slow_read(execution_id: str) -> dict[str, Any] | None:
            await asyncio.sleep(0.1)  # A busy database: every caller is inside this await.
            return await read(execution_id)

        monkeypatch.setattr(core.store, "get_execution", slow_read)
        answers = await asyncio.gather(
            *(core.execute(spec.workflow_id, {}, request_id="go") for _ in range(8))
        )
        assert len({a.execution_id for a in answers}) == 1
        assert core.running == 1
        ended = await core.execute(spec.workflow_id, {}, wait=True, request_id="go")
        assert ended.state.value == "SUCCEEDED"
        # One runner: the step body was called once and the execution is counted once.
        assert domain.attempts == {f"{ended.execution_id}/step_1": [1]}
        assert sum(core.stats.by_state.values()) == 1


@pytest.mark.parametrize(
    ("steps", "field"),
    [
        ([{"domain_id": "d", "action": "a", "depends_on": ["step_9"]}], "steps[0].depends_on"),
        (
            [
                {"domain_id": "d", "action": "a", "depends_on": ["step_3"]},
                {"domain_id": "d", "action": "b", "depends_on": ["step_1"]},
                {"domain_id": "d", "action": "c", "depends_on": ["step_2"]},
            ],
            "steps[0].depends_on",
        ),
        (
            [
                {"id": "x", "domain_id": "d", "action": "a"},
                {"id": "x", "domain_id": "d", "action": "b"},
            ],
            "steps[1].id",
        ),
        ([{"domain_id": "nobody", "action": "a"}], "steps[0].domain_id"),
        ([{"action": "a"}], "steps[0].domain_id"),
        (
            [
                {"domain_id": "d", "action": "a"},
                {"domain_id": "d", "action": "b", "data": {"x": {"$ref": "steps.step_1.output"}}},
            ],
            "steps[1].data",
        ),
        (
            [{"domain_id": "d", "action": "a", "retry": {"max_attempts": 99}}],
            "steps[0].retry.max_attempts",
        ),
        ([], "steps"),
        ([{"domain_id": "d", "action": "a"}] * 101, "steps"),
        (
            [{"domain_id": "d", "action": "a", "data": {"blob": "x" * (1024 * 1024)}}],
            "steps[0].data",
        ),
        ([{"domain_id": "d", "action": "a", "timeout": "7200s"}], "steps[0].timeout"),
    ],
)
async def test_invalid_workflows_are_rejected_naming_the_step(
    world: World, orchestrator: Stub, steps: list[dict[str, Any]], field: str
) -> None:
    await world.add_domain("d")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await orchestrator.CreateWorkflow(workflow({"name": "bad", "steps": steps}))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(field + ":"), caught.value.details()


async def test_unknown_ids_are_not_found(orchestrator: Stub) -> None:
    for call in (
        orchestrator.GetWorkflow(pb.GetWorkflowRequest(workflow_id="wf_nope")),
        orchestrator.GetExecution(pb.GetExecutionRequest(execution_id="ex_nope")),
        orchestrator.ExecuteWorkflow(pb.ExecuteWorkflowRequest(workflow_id="wf_nope")),
        orchestrator.GetExecutionProof(pb.GetExecutionProofRequest(execution_id="ex_nope")),
        orchestrator.CancelExecution(pb.CancelExecutionRequest(execution_id="ex_nope")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_compensation_uses_the_declared_action_skips_read_only_steps_and_unimplemented(
    world: World, orchestrator: Stub
) -> None:
    domain = await world.add_domain("d")

    async def unimplemented(request: Any) -> dict[str, Any]:
        raise GrpcFailure(grpc.StatusCode.UNIMPLEMENTED, "no compensation for analyze")

    async def fail(request: Any) -> dict[str, Any]:
        raise GrpcFailure(grpc.StatusCode.FAILED_PRECONDITION, "no")

    domain.compensations["analyze"] = unimplemented
    domain.actions["fail"] = fail
    body = {
        "name": "undo_kinds",
        "steps": [
            {"domain_id": "d", "action": "ingest", "compensation": {"action": "delete"}},
            {"domain_id": "d", "action": "search", "compensation": {"skip": True}},
            {"domain_id": "d", "action": "analyze", "depends_on": ["step_1", "step_2"]},
            {"domain_id": "d", "action": "fail", "depends_on": ["step_3"]},
        ],
    }
    ex = await run(orchestrator, body)
    assert ex.state == pb.EXECUTION_STATE_ROLLED_BACK
    compensated = [(c[2], c[3]) for c in world.journal.calls if c[0] == "compensate"]
    assert ("delete", "step_1") in compensated
    assert all(step != "step_2" for _, step in compensated)
    proof = (
        await orchestrator.GetExecutionProof(
            pb.GetExecutionProofRequest(execution_id=ex.execution_id)
        )
    ).proof
    outcomes = {(r.step_id, r.outcome) for r in proof.records if r.kind == "compensate"}
    assert outcomes == {("step_3", "skipped"), ("step_2", "skipped"), ("step_1", "succeeded")}


async def test_a_workflow_is_accepted_unchecked_when_the_registry_is_down(
    world: World, tmp_path: Path
) -> None:
    service = OrchestratorServer(orchestrator_config(tmp_path / "lonely", "127.0.0.1:9"))
    async with serving(service.config.server, service) as (_, chan):
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(chan)
        created = await stub.CreateWorkflow(workflow(SEED_BODY))
        assert not created.domains_checked
        body = {
            "name": "nowhere",
            "steps": [{"domain_id": "memory_domain", "action": "search", "retry": fast_retry(2)}],
        }
        ex = await run(stub, body)
        assert ex.state == pb.EXECUTION_STATE_ROLLED_BACK
        assert "registry" in ex.steps[0].error
        assert ex.steps[0].attempts == 2


async def test_a_transient_database_failure_delays_an_execution_without_losing_it(
    world: World, orchestrator: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    await world.add_domain("d")
    original = OrchestratorStore.save
    failures = 2

    async def flaky_save(self: OrchestratorStore, *args: Any, **kwargs: Any) -> None:
        nonlocal failures
        snapshot = args[0]
        if failures and any(s["state"] == "SUCCEEDED" for s in snapshot["steps"]):
            failures -= 1
            raise OSError("disk went away")
        await original(self, *args, **kwargs)

    monkeypatch.setattr(OrchestratorStore, "save", flaky_save)
    body = {
        "name": "bumpy",
        "steps": [
            {"domain_id": "d", "action": "a"},
            {"domain_id": "d", "action": "b", "depends_on": ["step_1"]},
        ],
    }
    ex = await run(orchestrator, body)
    assert ex.state == pb.EXECUTION_STATE_SUCCEEDED
    assert failures == 0
    stored = await orchestrator.GetExecution(pb.GetExecutionRequest(execution_id=ex.execution_id))
    assert stored.execution.state == pb.EXECUTION_STATE_SUCCEEDED


async def test_a_reference_to_a_missing_output_fails_the_step_and_is_in_the_proof(
    world: World, orchestrator: Stub
) -> None:
    await world.add_domain("d")
    body = {
        "name": "dangling",
        "steps": [
            {"domain_id": "d", "action": "a"},
            {
                "domain_id": "d",
                "action": "b",
                "depends_on": ["step_1"],
                "data": {"x": "${steps.step_1.output.nothing_here}"},
            },
        ],
    }
    ex = await run(orchestrator, body)
    assert ex.state == pb.EXECUTION_STATE_ROLLED_BACK
    assert "nothing_here" in ex.steps[1].error
    assert list(ex.compensation_order) == ["step_1"]
    proof = (
        await orchestrator.GetExecutionProof(
            pb.GetExecutionProofRequest(execution_id=ex.execution_id)
        )
    ).proof
    assert ("step_2", "failed") in {(r.step_id, r.outcome) for r in proof.records}
