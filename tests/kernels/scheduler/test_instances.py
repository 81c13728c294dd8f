"""Two scheduler processes on one PostgreSQL, one killed with SIGKILL: every due time of
every schedule still starts its workflow exactly once (a double of the orchestrator counts
the distinct request ids it is sent, as the real one deduplicates them)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import grpc
import pytest

from grace.kernels.scheduler.v1 import scheduler_pb2 as pb
from grace.kernels.scheduler.v1 import scheduler_pb2_grpc
from grace.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from services.common.channels import channel
from services.common.server import GraceServer, Service
from services.common.timestamps import from_timestamp, to_duration
from tests.conftest import postgres_url
from tests.grace_up import PROJECT_ROOT
from tests.support import ISOLATED_PEERS, free_ports, server_config

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

SCHEDULES = 5
PERIOD_S = 1


class OrchestratorDouble(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    """Records ExecuteWorkflow calls; one execution per request id, as the real one."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def ExecuteWorkflow(
        self, request: orchestrator_pb2.ExecuteWorkflowRequest, context: Any
    ) -> orchestrator_pb2.ExecuteWorkflowResponse:
        self.calls.append((request.request_id, dict(request.input["_schedule"])))
        return orchestrator_pb2.ExecuteWorkflowResponse(execution_id=request.request_id)


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    url = postgres_url()
    if url is None:
        pytest.skip("GRACE_TEST_POSTGRES_URL is not set")
    import asyncpg

    name = f"sched_{uuid.uuid4().hex[:10]}"
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL is unreachable: {exc}")
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    base, _, _ = dsn.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        conn = await asyncpg.connect(dsn, timeout=5)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


async def _start(
    port: int, database_url: str, orchestrator: str, name: str
) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        **ISOLATED_PEERS,
        "GRACE_ORCHESTRATOR_ADDR": orchestrator,
        "GRACE_DATABASE_URL": database_url,
        "GRACE_SCHEDULER_PORT": str(port),
        "GRACE_SCHEDULER_REGISTER": "false",
        "GRACE_SCHEDULER_INSTANCE_ID": name,
        "GRACE_SCHEDULER_LEASE_S": "3",
        "GRACE_SCHEDULER_ACTION_TIMEOUT_S": "2",
        "GRACE_SCHEDULER_POLL_INTERVAL_S": "0.2",
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.kernels.scheduler",
        cwd=PROJECT_ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def _until_serving(address: str) -> None:
    deadline = time.monotonic() + 60
    async with channel(address) as chan:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(chan)
        while True:
            try:
                await stub.GetSchedulerStats(pb.GetSchedulerStatsRequest(), timeout=2)
                return
            except grpc.aio.AioRpcError:
                assert time.monotonic() < deadline, f"scheduler at {address} never served"
                await asyncio.sleep(0.2)


class DoubleService(Service):
    def __init__(self, double: OrchestratorDouble) -> None:
        self.double = double

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(self.double, server)
        return [orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"].full_name]


async def test_two_instances_fire_each_due_time_once_when_one_is_killed(
    database_url: str,
) -> None:
    double = OrchestratorDouble()
    # Served by the one bootstrap, so it speaks TLS with the test PKI as the schedulers do.
    server = GraceServer(server_config("orchestrator", Path("/nonexistent")), DoubleService(double))
    await server.start()
    orch_port = server.port
    port_a, port_b = free_ports(2)
    a = await _start(port_a, database_url, f"127.0.0.1:{orch_port}", "a")
    b: asyncio.subprocess.Process | None = None
    try:
        await _until_serving(f"127.0.0.1:{port_a}")
        b = await _start(port_b, database_url, f"127.0.0.1:{orch_port}", "b")
        await _until_serving(f"127.0.0.1:{port_b}")
        async with channel(f"127.0.0.1:{port_b}") as chan:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(chan)
            for i in range(SCHEDULES):
                await stub.CreateSchedule(
                    pb.CreateScheduleRequest(
                        schedule_id=f"s{i}",
                        spec=pb.ScheduleSpec(
                            interval=pb.IntervalSpec(every=to_duration(PERIOD_S)),
                            workflow=pb.WorkflowAction(workflow_id="wf"),
                            owner="operator:test",
                        ),
                    )
                )
            await asyncio.sleep(4)
            a.send_signal(signal.SIGKILL)
            await a.wait()
            await asyncio.sleep(6)  # longer than the lease: what `a` held is taken over
            for i in range(SCHEDULES):
                await stub.PauseSchedule(pb.PauseScheduleRequest(schedule_id=f"s{i}"))
            await asyncio.sleep(4)  # let the last firings finish
            schedules = [
                (await stub.GetSchedule(pb.GetScheduleRequest(schedule_id=f"s{i}"))).schedule
                for i in range(SCHEDULES)
            ]
            firings = {
                s.schedule_id: (
                    await stub.ListFirings(
                        pb.ListFiringsRequest(schedule_id=s.schedule_id, page_size=1000)
                    )
                ).firings
                for s in schedules
            }
    finally:
        for proc in (a, b):
            if proc is not None and proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                await proc.wait()
        await server.stop(0.0)

    request_ids = {request_id for request_id, _ in double.calls}
    total = 0
    for schedule_id, fired in firings.items():
        assert all(f.outcome == pb.FIRING_OUTCOME_SUCCEEDED for f in fired), schedule_id
        dues = sorted(from_timestamp(f.due_time) for f in fired)
        gaps = {round(y - x, 3) for x, y in pairwise(dues)}
        assert gaps == {float(PERIOD_S)}, f"{schedule_id} fired {dues}"  # none missed or twice
        total += len(fired)
    assert total >= SCHEDULES * 8
    assert len(request_ids) == total  # each firing reached the orchestrator under one key
    by_due = {(c["schedule_id"], c["due"]) for _, c in double.calls}
    assert len(by_due) == total
