"""Compensation that cannot finish at once: without the registry, retried, or abandoned."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import grpc
import pytest

from grace.orchestrator.v1 import orchestrator_pb2 as pb
from grace.orchestrator.v1 import orchestrator_pb2_grpc
from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.backoff import Backoff
from services.common.channels import channel
from services.common.errors import FailedPrecondition
from services.orchestrator.engine import Orchestrator
from services.orchestrator.server import OrchestratorServer
from tests.conftest import DatabaseTarget
from tests.orchestrator.conftest import (
    GrpcFailure,
    ListPublisher,
    World,
    orchestrator_config,
)
from tests.orchestrator.test_resume import _ready
from tests.orchestrator.test_resume import _start as start_orchestrator
from tests.orchestrator.test_workflows import fast_retry, run, workflow
from tests.support import Pause, eventually, free_port, give_up_midway, pause_after, serving

Stub = orchestrator_pb2_grpc.OrchestratorServiceStub

QUICK_ROUNDS = Backoff(initial_s=0.2, factor=2.0, max_s=1.0)
# Long enough that no automatic round starts while a test looks.
NO_AUTOMATIC_ROUND = Backoff(initial_s=3600.0, factor=2.0, max_s=3600.0)


def _undo_fails_twice_body() -> dict[str, Any]:
    return {
        "name": "fragile_undo",
        "steps": [
            {"domain_id": "d", "action": "store", "retry": fast_retry(1)},
            {"domain_id": "d", "action": "boom", "depends_on": ["step_1"], "retry": fast_retry(1)},
        ],
    }


class Undo:
    """A compensation that fails while `broken` is true."""

    def __init__(self) -> None:
        self.broken = True
        self.calls = 0

    async def __call__(self, request: Any) -> dict[str, Any]:
        self.calls += 1
        if self.broken:
            raise GrpcFailure(grpc.StatusCode.INTERNAL, "undo broke")
        return {"undone": True}


async def _fails(request: Any) -> dict[str, Any]:
    raise GrpcFailure(grpc.StatusCode.FAILED_PRECONDITION, "no")


@pytest.fixture
async def orchestrator_with(
    world: World,
) -> AsyncIterator[Any]:
    """Starts in-process orchestrators with chosen compensation rounds."""
    async with AsyncExitStack() as stack:

        async def start(rounds: Backoff, route_cache_s: float = 0.5) -> Stub:
            config = orchestrator_config(world.tmp_path / "orch", world.registry_address)
            config = dataclasses.replace(
                config,
                settings=dataclasses.replace(config.settings, compensation_retry=rounds),
                route_cache_s=route_cache_s,
            )
            service = OrchestratorServer(config, publisher=ListPublisher(world.events))
            _, chan = await stack.enter_async_context(serving(config.server, service))
            return orchestrator_pb2_grpc.OrchestratorServiceStub(chan)

        yield start


async def _state(stub: Stub, execution_id: str) -> pb.Execution:
    got = await stub.GetExecution(pb.GetExecutionRequest(execution_id=execution_id))
    return got.execution


async def test_a_failed_compensation_is_retried_with_backoff_until_it_rolls_back(
    world: World, orchestrator_with: Any
) -> None:
    stub = await orchestrator_with(QUICK_ROUNDS)
    domain = await world.add_domain("d")
    undo = Undo()
    domain.actions["boom"] = _fails
    domain.compensations["store"] = undo
    ex = await run(stub, _undo_fails_twice_body())
    assert ex.state == pb.EXECUTION_STATE_COMPENSATION_FAILED
    assert ex.HasField("next_compensation_at")

    async def failed_again() -> bool:
        return undo.calls >= 3

    await eventually(failed_again, within_s=20)
    undo.broken = False

    async def rolled_back() -> bool:
        return (await _state(stub, ex.execution_id)).state == pb.EXECUTION_STATE_ROLLED_BACK

    await eventually(rolled_back, within_s=20)

    # The last round's events leave through the outbox after its commit: wait for them.
    async def last_round_announced() -> bool:
        return any(
            e.event_type == "workflow.rolled_back" and e.data.get("final_state") == "ROLLED_BACK"
            for e in world.events
        )

    await eventually(last_round_announced, within_s=20)
    final = await _state(stub, ex.execution_id)
    assert final.compensation_rounds >= 2
    assert final.steps[0].state == pb.STEP_STATE_COMPENSATED
    assert not final.HasField("next_compensation_at")
    proof = await stub.GetExecutionProof(pb.GetExecutionProofRequest(execution_id=ex.execution_id))
    assert proof.proof.final_state == "ROLLED_BACK"
    assert (await stub.VerifyProof(pb.VerifyProofRequest(proof=proof.proof))).valid
    types = [e.event_type for e in world.events if e.subject == ex.execution_id]
    assert types.count("workflow.compensation.retrying") == final.compensation_rounds
    # Each round ends with its own event: the bus does not drop the last one as a duplicate.
    ends = [e for e in world.events if e.event_type == "workflow.rolled_back"]
    assert len({e.event_id for e in ends}) == len(ends) == final.compensation_rounds + 1
    assert ends[-1].data["final_state"] == "ROLLED_BACK"


async def test_operators_list_retry_and_abandon_compensation_failed_executions(
    world: World, orchestrator_with: Any
) -> None:
    stub = await orchestrator_with(NO_AUTOMATIC_ROUND)
    domain = await world.add_domain("d")
    undo = Undo()
    domain.actions["boom"] = _fails
    domain.compensations["store"] = undo
    first = await run(stub, _undo_fails_twice_body())
    second = await run(stub, _undo_fails_twice_body())
    listed = await stub.ListCompensationFailed(pb.ListCompensationFailedRequest(page_size=1))
    assert [e.execution_id for e in listed.executions] == [second.execution_id]
    rest = await stub.ListCompensationFailed(
        pb.ListCompensationFailedRequest(page_size=1, page_token=listed.next_page_token)
    )
    assert [e.execution_id for e in rest.executions] == [first.execution_id]
    assert not rest.next_page_token

    # Abandon: who and why are recorded; who is the authenticated caller (the test PKI's
    # admin), not the name sent.
    abandoned = (
        await stub.AbandonCompensation(
            pb.AbandonCompensationRequest(
                execution_id=first.execution_id,
                operator="alice",
                reason="document deleted by hand",
            )
        )
    ).execution
    assert abandoned.state == pb.EXECUTION_STATE_COMPENSATION_FAILED
    assert abandoned.abandonment.operator == "test-admin"
    assert abandoned.abandonment.reason == "document deleted by hand"
    assert not abandoned.HasField("next_compensation_at")
    # Read back from the cache of ended executions, which holds it abandoned now.
    assert await _state(stub, first.execution_id) == abandoned
    pending = await stub.ListCompensationFailed(pb.ListCompensationFailedRequest())
    assert [e.execution_id for e in pending.executions] == [second.execution_id]
    everything = await stub.ListCompensationFailed(
        pb.ListCompensationFailedRequest(include_abandoned=True)
    )
    assert len(everything.executions) == 2
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.RetryCompensation(pb.RetryCompensationRequest(execution_id=first.execution_id))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "abandoned" in (refused.value.details() or "")

    # Retry now, once the domain can undo again.
    undo.broken = False
    retried = await stub.RetryCompensation(
        pb.RetryCompensationRequest(execution_id=second.execution_id, operator="bob")
    )
    assert retried.execution.state == pb.EXECUTION_STATE_COMPENSATING

    async def rolled_back() -> bool:
        return (await _state(stub, second.execution_id)).state == pb.EXECUTION_STATE_ROLLED_BACK

    await eventually(rolled_back, within_s=20)
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await stub.RetryCompensation(pb.RetryCompensationRequest(execution_id=second.execution_id))
    assert ended.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    events = {(e.event_type, e.subject): e for e in world.events}
    abandoned_event = events[("workflow.compensation.abandoned", first.execution_id)]
    assert abandoned_event.data["abandoned_by"] == "test-admin"
    retrying = events[("workflow.compensation.retrying", second.execution_id)]
    assert retrying.data["requested_by"] == "test-admin"
    assert (await stub.ListCompensationFailed(pb.ListCompensationFailedRequest())).executions == []


@pytest.fixture
async def core_with(world: World) -> AsyncIterator[Any]:
    """Starts in-process orchestrators with chosen compensation rounds (on SQLite, or on
    `database`); gives their core and a stub."""
    async with AsyncExitStack() as stack:

        async def start(rounds: Backoff, database: DatabaseTarget) -> tuple[Orchestrator, Stub]:
            config = orchestrator_config(world.tmp_path / "orch", world.registry_address)
            config = dataclasses.replace(
                config,
                server=dataclasses.replace(config.server, database_url=database.url),
                settings=dataclasses.replace(config.settings, compensation_retry=rounds),
            )
            service = OrchestratorServer(config, schema=database.schema)
            _, chan = await stack.enter_async_context(serving(config.server, service))
            assert service.core is not None
            return service.core, Stub(chan)

        yield start


def _pause_after_storing(
    core: Orchestrator, monkeypatch: pytest.MonkeyPatch, stored_when: Callable[[Any], bool]
) -> Pause:
    """Makes the orchestrator wait, once the first snapshot `stored_when` accepts is stored,
    until released."""
    return pause_after(
        monkeypatch, core.store, "save", lambda snapshot, *_, **__: stored_when(snapshot)
    )


@pytest.fixture
async def compensation_failed(
    world: World, core_with: Any, database: DatabaseTarget
) -> tuple[Orchestrator, Stub, pb.Execution, Undo]:
    """An orchestrator without automatic rounds (on SQLite, or on `database`), and an
    execution of it whose compensation failed, with the compensation that failed."""
    core, stub = await core_with(NO_AUTOMATIC_ROUND, database)
    domain = await world.add_domain("d")
    undo = Undo()
    domain.actions["boom"] = _fails
    domain.compensations["store"] = undo
    ex = await run(stub, _undo_fails_twice_body())
    assert ex.state == pb.EXECUTION_STATE_COMPENSATION_FAILED
    return core, stub, ex, undo


async def test_a_compensation_retry_whose_caller_gives_up_midway_still_runs_its_round(
    compensation_failed: tuple[Orchestrator, Stub, pb.Execution, Undo],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A client's deadline cancels the RPC's handler, here just after the round is stored
    # COMPENSATING: the round must still run, since retrying a COMPENSATING execution is
    # refused.
    core, stub, ex, undo = compensation_failed
    stored = _pause_after_storing(
        core, monkeypatch, lambda snapshot: snapshot["state"] == "COMPENSATING"
    )
    undo.broken = False
    await give_up_midway(core.rounds.retry(ex.execution_id, "bob"), stored)

    async def rolled_back() -> bool:
        return (await _state(stub, ex.execution_id)).state == pb.EXECUTION_STATE_ROLLED_BACK

    await eventually(rolled_back, within_s=20)
    assert (await _state(stub, ex.execution_id)).compensation_rounds == 1


async def test_an_abandon_whose_caller_gives_up_midway_is_not_undone_by_a_later_round(
    compensation_failed: tuple[Orchestrator, Stub, pb.Execution, Undo],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Cancelled just after the abandon is stored, before the schedule and the cache of
    # ended executions learn of it: a round (the scheduler's retry, with no operator) must
    # still find it abandoned rather than start from the copy that was not.
    core, stub, ex, _ = compensation_failed
    stored = _pause_after_storing(
        core, monkeypatch, lambda snapshot: bool(snapshot.get("abandoned_at"))
    )
    abandoning = core.rounds.abandon(ex.execution_id, "alice", "document deleted by hand")
    await give_up_midway(abandoning, stored)
    with pytest.raises(FailedPrecondition, match="abandoned"):
        await core.rounds.retry(ex.execution_id)
    got = await _state(stub, ex.execution_id)
    assert got.state == pb.EXECUTION_STATE_COMPENSATION_FAILED
    assert got.abandonment.operator == "alice"


def _start_registry(port: int, data_dir: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "GRACE_DATA_DIR": str(data_dir),
        "GRACE_REGISTRY_PORT": str(port),
        "GRACE_EVENTBUS_ADDR": "127.0.0.1:9",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "services.registry"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.slow
async def test_compensation_reaches_a_domain_that_is_up_while_the_registry_is_killed(
    tmp_path: Path,
) -> None:
    port = free_port()
    registry = _start_registry(port, tmp_path / "registry")
    address = f"127.0.0.1:{port}"
    try:
        async with AsyncExitStack() as stack, channel(address) as registry_channel:
            registry_stub = registry_pb2_grpc.RegistryServiceStub(registry_channel)

            async def registry_up() -> bool:
                try:
                    await registry_stub.ListDomains(registry_pb2.ListDomainsRequest(), timeout=1)
                except grpc.aio.AioRpcError:
                    return False
                return True

            await eventually(registry_up, within_s=30)
            world = World(stack, tmp_path, address)
            domain = await world.add_domain("d")

            async def registry_dies_then_fail(request: Any) -> dict[str, Any]:
                registry.send_signal(signal.SIGKILL)
                await asyncio.to_thread(registry.wait, 30)
                raise GrpcFailure(grpc.StatusCode.FAILED_PRECONDITION, "no")

            domain.actions["boom"] = registry_dies_then_fail
            config = orchestrator_config(tmp_path / "orch", address)
            # No cached route: only the address remembered with the step can help.
            config = dataclasses.replace(config, route_cache_s=0.0)
            service = OrchestratorServer(config)
            _, chan = await stack.enter_async_context(serving(config.server, service))
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(chan)
            body = {
                "name": "registry_outage",
                "steps": [
                    {"domain_id": "d", "action": "store"},
                    {"domain_id": "d", "action": "boom", "depends_on": ["step_1"]},
                ],
            }
            ex = await run(stub, body)
            assert registry.poll() is not None  # The registry is still down.
    finally:
        if registry.poll() is None:
            registry.kill()
            registry.wait(30)
    assert ex.state == pb.EXECUTION_STATE_ROLLED_BACK
    assert ex.steps[0].state == pb.STEP_STATE_COMPENSATED
    assert ex.steps[0].address == f"127.0.0.1:{world.servers['d'].port}"
    assert ("compensate", "d", "store", "step_1") in world.journal.calls


@pytest.mark.slow
async def test_a_compensation_failed_execution_is_retried_after_a_kill_9_of_the_orchestrator(
    world: World, tmp_path: Path
) -> None:
    domain = await world.add_domain("d")
    undo = Undo()
    domain.actions["boom"] = _fails
    domain.compensations["store"] = undo
    port = free_port()
    data_dir = tmp_path / "orchestrator-data"
    rounds = {"GRACE_ORCHESTRATOR_COMPENSATION_RETRY_S": "3"}
    process = start_orchestrator(port, data_dir, world.registry_address, rounds)
    try:
        async with channel(f"127.0.0.1:{port}") as chan:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(chan)
            await eventually(lambda: _ready(stub), within_s=30)
            created = await stub.CreateWorkflow(workflow(_undo_fails_twice_body()))
            ex = (
                await stub.ExecuteWorkflow(
                    pb.ExecuteWorkflowRequest(workflow_id=created.workflow_id, wait=True),
                    timeout=30,
                )
            ).execution
            assert ex.state == pb.EXECUTION_STATE_COMPENSATION_FAILED
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            undo.broken = False
            process = start_orchestrator(port, data_dir, world.registry_address, rounds)
            await eventually(lambda: _ready(stub), within_s=30)

            async def rolled_back() -> bool:
                state = (await _state(stub, ex.execution_id)).state
                return state == pb.EXECUTION_STATE_ROLLED_BACK

            await eventually(rolled_back, within_s=30)
            final = await _state(stub, ex.execution_id)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
    assert final.compensation_rounds >= 1
    assert final.steps[0].state == pb.STEP_STATE_COMPENSATED
