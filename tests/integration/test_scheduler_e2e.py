"""The scheduler under `grace up --with-examples`: a schedule that starts the seed document
workflow every few seconds, through the REST gateway, fires exactly once per period across
a kill -9 of the scheduler (Guardian restarts it; the firing it held, if any, is taken over
when its lease lapses, with the same idempotency key, so the orchestrator starts it once)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from datetime import datetime
from itertools import pairwise
from typing import Any

import httpx
import pytest

from grace.guardian.v1 import guardian_pb2, guardian_pb2_grpc
from services.common.channels import channel
from tests.grace_up import RunningGrace, running_grace
from tests.integration.test_seed_workflows import DOCUMENT_WORKFLOW, _document

pytestmark = pytest.mark.slow

PERIOD_S = 3
WORD = "lichenmoss"


@pytest.fixture(scope="module")
async def grace(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGrace]:
    env = {
        **os.environ,
        # A firing held by a killed instance is taken over after 6 s instead of 60 s.
        "GRACE_SCHEDULER_LEASE_S": "6",
        "GRACE_SCHEDULER_ACTION_TIMEOUT_S": "5",
    }
    async with running_grace(tmp_path_factory.mktemp("scheduler-e2e"), env=env) as running:
        yield running


async def _scheduler_pid(guardian: str) -> int:
    async with channel(guardian) as chan:
        listed = await guardian_pb2_grpc.GuardianServiceStub(chan).ListComponents(
            guardian_pb2.ListComponentsRequest(page_size=1000), timeout=5
        )
    return next((c.pid for c in listed.components if c.name == "scheduler"), 0)


async def _firings(http: httpx.AsyncClient, schedule_id: str) -> list[dict[str, Any]]:
    """The schedule's firings; waits out a scheduler that is restarting (503)."""
    deadline = time.monotonic() + 60
    while True:
        response = await http.get(
            f"/scheduler/schedules/{schedule_id}/firings", params={"page_size": 1000}
        )
        if response.status_code != 503 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert response.status_code == 200, response.text
    return list(response.json().get("firings", []))


async def _wait_for(http: httpx.AsyncClient, schedule_id: str, count: int) -> None:
    deadline = time.monotonic() + 120
    while len(await _firings(http, schedule_id)) < count:
        assert time.monotonic() < deadline, "the schedule stopped firing"
        await asyncio.sleep(0.5)


def _epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


async def test_a_schedule_starts_the_document_workflow_once_per_period_across_a_kill_9(
    grace: RunningGrace,
) -> None:
    async with grace.http(timeout=60) as http:
        created = await http.post("/domains/workflows/create", json=DOCUMENT_WORKFLOW)
        assert created.status_code == 200, created.text
        workflow_id = created.json()["workflow_id"]
        schedule = await http.post(
            "/scheduler/schedules",
            json={
                "schedule_id": "documents",
                "spec": {
                    "interval": {"every": f"{PERIOD_S}s"},
                    "workflow": {"workflow_id": workflow_id, "input": _document(WORD)},
                    "owner": "operator:e2e",
                },
            },
        )
        assert schedule.status_code == 200, schedule.text
        await _wait_for(http, "documents", 2)

        pid = await _scheduler_pid(grace.addresses["guardian"])
        assert pid > 0
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while (await _scheduler_pid(grace.addresses["guardian"])) in (0, pid):
            assert time.monotonic() < deadline, "Guardian did not restart the scheduler"
            await asyncio.sleep(0.2)
        fired_before = len(await _firings(http, "documents"))
        await _wait_for(http, "documents", fired_before + 3)

        paused = await http.post("/scheduler/schedules/documents/pause", json={})
        assert paused.status_code == 200, paused.text
        deadline = time.monotonic() + 60
        while any(
            f["outcome"] != "FIRING_OUTCOME_SUCCEEDED" for f in await _firings(http, "documents")
        ):
            assert time.monotonic() < deadline, "a firing never finished"
            await asyncio.sleep(0.5)
        firings = await _firings(http, "documents")
        executions = await http.get(
            "/domains/workflows/executions", params={"workflow_id": workflow_id, "page_size": 1000}
        )
        assert executions.status_code == 200, executions.text

    dues = sorted(_epoch(f["due_time"]) for f in firings)
    gaps = {round(b - a, 3) for a, b in pairwise(dues)}
    assert gaps == {PERIOD_S}, f"due times fired: {dues}"  # none missed, none twice
    started = executions.json()["executions"]
    started_dues = sorted(e["input"]["_schedule"]["due"] for e in started)
    assert len(started) == len(firings)
    assert [round(d, 3) for d in started_dues] == [round(d, 3) for d in dues]
    assert all(e["state"] != "EXECUTION_STATE_ROLLED_BACK" for e in started)
