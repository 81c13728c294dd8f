"""Crash recovery: kill -9 of the orchestrator process mid-execution, then a restart."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from grace.domain.v1 import domain_pb2
from grace.orchestrator.v1 import orchestrator_pb2 as pb
from grace.orchestrator.v1 import orchestrator_pb2_grpc
from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.channels import channel
from tests.orchestrator.conftest import World
from tests.orchestrator.test_workflows import workflow
from tests.sdk.conftest import Probe, counting_domain, domain_config
from tests.sdk.test_crash import start_crash_domain
from tests.support import eventually, free_port

pytestmark = pytest.mark.slow


def _start(
    port: int, data_dir: Path, registry: str, extra: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "GRACE_REGISTRY_ADDR": registry,
        "GRACE_DATA_DIR": str(data_dir),
        "GRACE_ORCHESTRATOR_PORT": str(port),
        **(extra or {}),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "services.orchestrator"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def _ready(stub: orchestrator_pb2_grpc.OrchestratorServiceStub) -> bool:
    try:
        await stub.GetStats(pb.GetStatsRequest(), timeout=1)
    except Exception:
        return False
    return True


async def test_killed_mid_execution_the_orchestrator_resumes_and_each_step_runs_once(
    world: World, tmp_path: Path
) -> None:
    domain = await world.add_domain("d")
    release = asyncio.Event()
    reached = asyncio.Event()

    async def slow(request: domain_pb2.ExecuteRequest) -> dict[str, Any]:
        reached.set()
        await release.wait()
        return {"slow": "done"}

    domain.actions["slow"] = slow
    port = free_port()
    data_dir = tmp_path / "orchestrator-data"
    process = _start(port, data_dir, world.registry_address)
    try:
        async with channel(f"127.0.0.1:{port}") as chan:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(chan)
            await eventually(lambda: _ready(stub), within_s=30)
            body = {
                "name": "crash",
                "steps": [
                    {"domain_id": "d", "action": "a"},
                    {"domain_id": "d", "action": "slow", "depends_on": ["step_1"]},
                    {"domain_id": "d", "action": "c", "depends_on": ["step_2"]},
                ],
            }
            created = await stub.CreateWorkflow(workflow(body))
            started = await stub.ExecuteWorkflow(
                pb.ExecuteWorkflowRequest(workflow_id=created.workflow_id)
            )
            await asyncio.wait_for(reached.wait(), timeout=30)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            # The domain finishes the call whose answer nobody receives any more.
            release.set()
            process = _start(port, data_dir, world.registry_address)
            await eventually(lambda: _ready(stub), within_s=30)

            async def ended() -> bool:
                got = await stub.GetExecution(
                    pb.GetExecutionRequest(execution_id=started.execution_id)
                )
                return got.execution.state == pb.EXECUTION_STATE_SUCCEEDED

            await eventually(ended, within_s=30)
            stats = await stub.GetStats(pb.GetStatsRequest())
            assert stats.executions_resumed == 1
            proof = await stub.GetExecutionProof(
                pb.GetExecutionProofRequest(execution_id=started.execution_id)
            )
            verdict = await stub.VerifyProof(pb.VerifyProofRequest(proof=proof.proof))
            assert verdict.valid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
    key = f"{started.execution_id}/step_2"
    # Every step's action ran exactly once; the in-flight one was called again with the
    # same idempotency key after the restart and answered from the stored result.
    assert domain.runs == {f"{started.execution_id}/{s}": 1 for s in ("step_1", "step_2", "step_3")}
    assert domain.replays.get(key) == 1


async def test_killed_mid_call_to_an_sdk_domain_the_step_body_runs_once(
    world: World, tmp_path: Path
) -> None:
    # The orchestrator dies while an SDK domain runs a step: gRPC cancels the domain's
    # handler, but the body must still finish and its result answer the resumed call.
    probe = Probe()
    probe.release.clear()
    config = domain_config(tmp_path / "domain", registry_addr=world.registry_address)
    port = free_port()
    data_dir = tmp_path / "orchestrator-data"
    async with counting_domain(probe).serve(config):
        process = _start(port, data_dir, world.registry_address)
        try:
            async with channel(f"127.0.0.1:{port}") as chan:
                stub = orchestrator_pb2_grpc.OrchestratorServiceStub(chan)
                await eventually(lambda: _ready(stub), within_s=30)
                body = {
                    "name": "sdk-crash",
                    "steps": [{"domain_id": "test_domain", "action": "slow"}],
                }
                created = await stub.CreateWorkflow(workflow(body))
                started = await stub.ExecuteWorkflow(
                    pb.ExecuteWorkflowRequest(workflow_id=created.workflow_id)
                )

                async def body_started() -> bool:
                    return probe.runs.get("slow", 0) > 0

                await eventually(body_started, within_s=30)
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=30)
                await asyncio.sleep(0.5)  # The domain sees the connection go.
                probe.release.set()
                process = _start(port, data_dir, world.registry_address)
                await eventually(lambda: _ready(stub), within_s=30)

                async def ended() -> bool:
                    got = await stub.GetExecution(
                        pb.GetExecutionRequest(execution_id=started.execution_id)
                    )
                    return got.execution.state == pb.EXECUTION_STATE_SUCCEEDED

                await eventually(ended, within_s=30)
                got = await stub.GetExecution(
                    pb.GetExecutionRequest(execution_id=started.execution_id)
                )
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
    assert probe.runs["slow"] == 1
    assert got.execution.steps[0].output["run"] == 1.0


async def test_a_step_rides_out_a_kill_9_and_restart_of_its_domain(
    world: World, orchestrator: orchestrator_pb2_grpc.OrchestratorServiceStub, tmp_path: Path
) -> None:
    port = free_port()
    data_dir = tmp_path / "crash-domain"
    domain = start_crash_domain(port, data_dir, world.registry_address)
    try:
        async with channel(world.registry_address) as chan:
            registry = registry_pb2_grpc.RegistryServiceStub(chan)

            async def registered() -> bool:
                try:
                    await registry.GetDomain(
                        registry_pb2.GetDomainRequest(domain_id="crash_domain")
                    )
                except grpc.aio.AioRpcError:
                    return False
                return True

            await eventually(registered, within_s=30)
        domain.send_signal(signal.SIGKILL)
        domain.wait(timeout=30)
        body = {"name": "restart", "steps": [{"domain_id": "crash_domain", "action": "ping"}]}
        created = await orchestrator.CreateWorkflow(workflow(body))
        request = pb.ExecuteWorkflowRequest(workflow_id=created.workflow_id, wait=True)

        async def execute() -> pb.ExecuteWorkflowResponse:
            return await orchestrator.ExecuteWorkflow(request, timeout=60)

        running = asyncio.create_task(execute())
        await asyncio.sleep(3.0)  # About as long as Guardian takes to restart it.
        assert not running.done()
        domain = start_crash_domain(port, data_dir, world.registry_address)
        ex = (await running).execution
    finally:
        domain.send_signal(signal.SIGKILL)
        domain.wait(timeout=30)
    assert ex.state == pb.EXECUTION_STATE_SUCCEEDED
    assert ex.steps[0].attempts > 3  # More than the default max_attempts.
    assert dict(ex.steps[0].output) == {"pong": True}
