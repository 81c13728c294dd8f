"""Several orchestrator instances on one PostgreSQL: execution leases and fencing tokens."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from grace.domain.v1 import domain_pb2
from grace.orchestrator.v1 import orchestrator_pb2 as pb
from grace.orchestrator.v1 import orchestrator_pb2_grpc
from services.common.channels import channel
from services.common.storage import Database
from services.orchestrator.leases import LeaseLost
from services.orchestrator.model import Execution, StepRun
from services.orchestrator.store import OrchestratorStore
from tests.conftest import DatabaseTarget
from tests.orchestrator.conftest import World
from tests.orchestrator.test_workflows import workflow
from tests.support import eventually, free_port


def _execution(execution_id: str) -> Execution:
    return Execution(
        execution_id=execution_id,
        workflow_id="wf_1",
        workflow_name="w",
        input={},
        steps={"step_1": StepRun("step_1", "a")},
        created_at=1.0,
    )


async def test_a_stale_owner_cannot_write_after_another_instance_took_the_execution_over(
    database: DatabaseTarget,
) -> None:
    first = OrchestratorStore(Database(database.url, schema=database.schema), lease_s=0.5)
    if database.backend == "sqlite":
        # SQLite is one instance's file: it has no leases and writes unchecked.
        assert first.leases is None
        return
    second = OrchestratorStore(Database(database.url, schema=database.schema), lease_s=0.5)
    await first.open()
    await second.open()
    try:
        assert first.leases is not None
        assert second.leases is not None
        assert await first.leases.acquire("ex_1") == 1
        execution = _execution("ex_1")
        await first.save(execution.to_json())
        assert await second.leases.acquire("ex_1") is None  # Live lease: not taken.
        assert await second.leases.orphans(10) == []
        await asyncio.sleep(0.7)  # The first instance stalls past its lease.
        assert await second.leases.orphans(10) == ["ex_1"]
        assert await second.leases.acquire("ex_1") == 2
        execution.error = "the new owner's progress"
        await second.save(execution.to_json())
        execution.error = "the stale owner's write"
        with pytest.raises(LeaseLost):
            await first.save(
                execution.to_json(), [("workflow.step", {}, "ex_1", "ex_1/stale")], sync=False
            )
        stored = await first.get_execution("ex_1")
        assert stored is not None
        assert stored["error"] == "the new owner's progress"
        assert await first.outbox.pending(10) == []  # Its events were refused with it.
        assert await first.leases.renew() == {"ex_1"}
        assert await second.leases.renew() == set()
    finally:
        await first.close()
        await second.close()


async def test_an_execution_started_while_leases_are_renewed_is_not_reported_lost(
    database: DatabaseTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = OrchestratorStore(Database(database.url, schema=database.schema), lease_s=5)
    await store.open()
    try:
        if store.leases is None:  # SQLite: one instance, no leases to renew
            assert database.backend == "sqlite"
            return
        leases = store.leases
        assert await leases.acquire("ex_1") == 1
        renewing = leases.db.transaction
        started: list[int | None] = []

        @asynccontextmanager
        async def start_meanwhile() -> AsyncIterator[Any]:
            # The renewal's statement is built; an execution starts before it runs.
            monkeypatch.undo()
            async with renewing() as conn:
                started.append(await leases.acquire("ex_2"))
                yield conn

        monkeypatch.setattr(leases.db, "transaction", start_meanwhile)
        assert await leases.renew() == set()
        assert started == [1]
        assert leases.held == {"ex_1": 1, "ex_2": 1}
        assert await leases.renew() == set()
    finally:
        await store.close()


class _Forgetful(dict[str, dict[str, Any]]):
    def __contains__(self, key: object) -> bool:
        return False


# -- two orchestrator processes, kill -9 of one under load ---------------------------------

_EXECUTIONS = 40
_LEASE_S = 5.0


def _start(port: int, data_dir: Path, registry: str, database_url: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "GRACE_REGISTRY_ADDR": registry,
        "GRACE_EVENTBUS_ADDR": "127.0.0.1:9",
        "GRACE_GOVERNANCE_ADDR": "127.0.0.1:9",
        "GRACE_TRUST_ADDR": "127.0.0.1:9",
        "GRACE_ORCHESTRATOR_GOVERNANCE": "off",
        "GRACE_DATA_DIR": str(data_dir),
        "GRACE_ORCHESTRATOR_PORT": str(port),
        "GRACE_DATABASE_URL": database_url,
        "GRACE_ORCHESTRATOR_LEASE_S": str(_LEASE_S),
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "stderr.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "services.orchestrator"], env=env, stdout=log, stderr=log
        )


async def _ready(stub: orchestrator_pb2_grpc.OrchestratorServiceStub) -> bool:
    try:
        await stub.GetStats(pb.GetStatsRequest(), timeout=1)
    except grpc.aio.AioRpcError:
        return False
    return True


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.slow
@pytest.mark.postgres
async def test_two_instances_under_load_one_killed_its_executions_finish_on_the_other_once(
    world: World, tmp_path: Path, fresh_postgres_database: str
) -> None:
    domain = await world.add_domain("d")
    calls: dict[str, list[float]] = {}
    killed_at = [float("inf")]

    async def work(request: domain_pb2.ExecuteRequest) -> dict[str, Any]:
        calls.setdefault(request.idempotency_key, []).append(time.monotonic())
        await asyncio.sleep(0.3)
        return {"done": request.step_id}

    domain.actions["work"] = work
    # The domain forgets its results, so every call runs: the fencing must hold without
    # idempotency keys.
    domain.results = _Forgetful()
    ports = [free_port(), free_port()]
    processes = [
        _start(port, tmp_path / f"orch{i}", world.registry_address, fresh_postgres_database)
        for i, port in enumerate(ports)
    ]
    try:
        async with channel(f"127.0.0.1:{ports[0]}") as a, channel(f"127.0.0.1:{ports[1]}") as b:
            stubs = [
                orchestrator_pb2_grpc.OrchestratorServiceStub(a),
                orchestrator_pb2_grpc.OrchestratorServiceStub(b),
            ]
            await eventually(lambda: _ready(stubs[0]), within_s=60)
            await eventually(lambda: _ready(stubs[1]), within_s=60)
            body = {
                "name": "leased",
                "steps": [
                    {"domain_id": "d", "action": "work"},
                    {"domain_id": "d", "action": "work", "depends_on": ["step_1"]},
                    {"domain_id": "d", "action": "work", "depends_on": ["step_2"]},
                ],
            }
            created = await stubs[0].CreateWorkflow(workflow(body))
            started = await asyncio.gather(
                *(
                    stubs[n % 2].ExecuteWorkflow(
                        pb.ExecuteWorkflowRequest(workflow_id=created.workflow_id), timeout=60
                    )
                    for n in range(_EXECUTIONS)
                )
            )
            ids = [s.execution_id for s in started]

            async def under_way() -> bool:
                return len(calls) >= _EXECUTIONS

            await eventually(under_way, within_s=60)
            processes[0].send_signal(signal.SIGKILL)
            processes[0].wait(timeout=30)
            killed_at[0] = time.monotonic()
            # A new instance comes up at once, while the dead one's leases still run: it
            # and the survivor race for them when they expire.
            processes[0] = _start(
                ports[0], tmp_path / "orch2", world.registry_address, fresh_postgres_database
            )

            async def all_succeeded() -> bool:
                for execution_id in ids:
                    got = await stubs[1].GetExecution(
                        pb.GetExecutionRequest(execution_id=execution_id), timeout=10
                    )
                    if got.execution.state != pb.EXECUTION_STATE_SUCCEEDED:
                        return False
                return True

            await eventually(all_succeeded, within_s=_LEASE_S * 10 + 60)
            resumed_after_s = time.monotonic() - killed_at[0]
            await eventually(lambda: _ready(stubs[0]), within_s=60)
            stats = [
                await stubs[0].GetStats(pb.GetStatsRequest(), timeout=10),
                await stubs[1].GetStats(pb.GetStatsRequest(), timeout=10),
            ]
    finally:
        for process in processes:
            _stop(process)
    keys = {f"{i}/step_{n}" for i in ids for n in (1, 2, 3)}
    assert set(calls) == keys  # Nothing stuck: every step of every execution was called.
    twice_by_the_living = {
        key for key, times in calls.items() if sum(t > killed_at[0] for t in times) > 1
    }
    twice_before_the_kill = {
        key for key, times in calls.items() if sum(t <= killed_at[0] for t in times) > 1
    }
    assert twice_by_the_living == set()
    assert twice_before_the_kill == set()
    # The dead instance's executions were resumed by the others.
    assert sum(s.executions_resumed for s in stats) >= 1
    print(
        f"{_EXECUTIONS} executions, lease {_LEASE_S}s: all ended {resumed_after_s:.1f}s after "
        f"the kill; {sum(s.executions_resumed for s in stats)} resumed elsewhere; "
        f"{sum(len(t) > 1 for t in calls.values())} in-flight calls repeated across the kill"
    )
