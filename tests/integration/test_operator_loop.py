"""Seed 002's operator loop end to end, under `grace up --with-examples`, over REST.

A domain fails its calls and the API in front of it reports each failure as an
`api.endpoint.failed` event -> the tasks kernel's event-started cycle finds the weak point
and proposes a task -> governance holds it for approval (the kernel's default policy holds
medium-risk tasks such as a restart) -> an operator approves it over REST -> it runs once
(Guardian restarts the domain) -> `squad.task.completed` on the bus and every transition in
the immutable log -> the next cycle records that the task fixed its weak point, and a cycle
after new failures ranks the remedy by that record.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.grace_up import RunningGrace, running_grace
from tests.support import eventually

pytestmark = pytest.mark.slow

WEAK_POINT = "endpoint_failures:ai_domain"


@pytest.fixture
async def grace(tmp_path: Path) -> AsyncIterator[RunningGrace]:
    env = {**os.environ, "GRACE_TASKS_MIN_INTERVAL_S": "1"}
    async with running_grace(tmp_path, env=env) as platform:
        yield platform


async def ok(response: Awaitable[httpx.Response]) -> dict[str, Any]:
    answered = await response
    assert answered.status_code == 200, answered.text
    body: dict[str, Any] = answered.json()
    return body


async def fail_calls(http: httpx.AsyncClient, times: int) -> None:
    """Calls ai_domain's analyze without its input (the domain refuses each call) and
    reports each failure as the API in front of it does."""
    for _ in range(times):
        refused = await http.post("/domains/invoke/ai_domain/analyze", json={"input": {}})
        assert refused.status_code >= 400, refused.text
        await ok(
            http.post(
                "/domains/events/publish",
                json={
                    "event_type": "api.endpoint.failed",
                    "source_domain": "gateway",
                    "data": {
                        "domain_id": "ai_domain",
                        "endpoint": "/domains/invoke/ai_domain/analyze",
                        "status": refused.status_code,
                        "error": refused.text[:200],
                    },
                },
            )
        )


async def log_entries(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    token = ""
    while True:
        page = await ok(
            http.get("/kernels/log/entries", params={"page_size": 1000, "page_token": token})
        )
        entries.extend(page.get("entries", []))
        token = page.get("nextPageToken", page.get("next_page_token", ""))
        if not token:
            return entries


def field(body: dict[str, Any], name: str) -> Any:
    """A field by its proto name or its JSON (lowerCamel) name."""
    camel = name.split("_")[0] + "".join(p.title() for p in name.split("_")[1:])
    return body.get(name, body.get(camel))


async def test_failures_become_an_approved_task_that_runs_once_and_teaches_the_next_cycle(
    grace: RunningGrace,
) -> None:
    async with grace.http(timeout=120) as http:
        # 1. Failures -> an event-started cycle proposes a task, held for approval.
        await fail_calls(http, 3)

        async def proposed() -> tuple[dict[str, Any], str] | None:
            for cycle in (await ok(http.get("/tasks/cycles"))).get("cycles", []):
                for proposal in cycle.get("proposals", []):
                    task_id = field(proposal, "task_id")
                    if field(proposal, "weak_point") == WEAK_POINT and task_id:
                        return cycle, task_id
            return None

        cycle, task_id = await eventually(
            proposed, within_s=90, what="a cycle proposing a task for ai_domain", every_s=0.25
        )
        assert cycle["trigger"] == "event"
        assert "api.endpoint.failed" in field(cycle, "trigger_detail")
        task = (await ok(http.get(f"/tasks/{task_id}")))["task"]
        assert task["state"] == "TASK_STATE_PENDING_APPROVAL"
        assert task["remedy"] == "heal:restart_component"
        approval_id = field(task, "approval_id")
        approvals = await ok(http.get("/kernels/governance/approvals"))
        assert approval_id in [field(a, "approval_id") for a in approvals["approvals"]]
        pending = await ok(http.get("/tasks", params={"state": "TASK_STATE_PENDING_APPROVAL"}))
        assert task_id in [field(t, "task_id") for t in pending["tasks"]]

        # 2. Nothing runs until a person approves; the requester itself cannot.
        await asyncio.sleep(1.0)
        assert (await ok(http.get(f"/tasks/{task_id}")))["task"]["state"] == (
            "TASK_STATE_PENDING_APPROVAL"
        )
        # People are who their token says: the requester's operator token, then alice's.
        as_tasks = {"authorization": f"Bearer {grace.new_token('tasks', 'operator')}"}
        as_alice = {"authorization": f"Bearer {grace.new_token('alice', 'operator')}"}
        await asyncio.sleep(1.5)  # servers re-read the token file every second
        own = await http.post(f"/tasks/{task_id}/approve", json={}, headers=as_tasks)
        # (The gateway's own gate holds a request by `tasks` under the same policy.)
        assert own.status_code in (202, 400, 403, 409), own.text
        assert (await ok(http.get(f"/tasks/{task_id}")))["task"]["state"] == (
            "TASK_STATE_PENDING_APPROVAL"
        )
        await ok(
            http.post(
                f"/tasks/{task_id}/approve",
                json={"reason": "restart it"},
                headers=as_alice,
            )
        )

        # 3. It runs once and completes.
        async def completed() -> dict[str, Any] | None:
            found = (await ok(http.get(f"/tasks/{task_id}")))["task"]
            return found if found["state"] == "TASK_STATE_COMPLETED" else None

        done = await eventually(
            completed, within_s=90, what="the approved task to complete", every_s=0.25
        )
        assert done["attempts"] == 1
        states = [h["state"] for h in done["history"]]
        assert states == [
            "TASK_STATE_PENDING_APPROVAL",
            "TASK_STATE_APPROVED",
            "TASK_STATE_DISPATCHED",
            "TASK_STATE_RUNNING",
            "TASK_STATE_COMPLETED",
        ]
        assert done["history"][1]["actor"] == "alice"

        async def announced() -> list[dict[str, Any]]:
            got = await ok(
                http.get(
                    "/domains/events/history",
                    params={"pattern": "squad.task.completed", "page_size": 1000},
                )
            )
            return [e for e in got.get("events", []) if field(e["data"], "task_id") == task_id]

        completions = await eventually(
            announced, within_s=90, what="squad.task.completed on the bus", every_s=0.25
        )
        assert len(completions) == 1

        async def logged() -> list[str] | None:
            kinds = [
                e["data"]["kind"]
                for e in await log_entries(http)
                if (e["data"].get("data") or {}).get("task_id") == task_id
            ]
            return kinds if "squad.task.completed" in kinds else None

        kinds = await eventually(
            logged, within_s=90, what="the task's transitions in the immutable log", every_s=0.25
        )
        assert kinds == [
            "squad.task.pending_approval",
            "squad.task.approved",
            "squad.task.dispatched",
            "squad.task.running",
            "squad.task.completed",
        ]

        # 4. The next cycle records that the task fixed its weak point...
        judged = (await ok(http.post("/tasks/cycles", json={"reason": "after the fix"})))["cycle"]
        assert WEAK_POINT not in [w["key"] for w in judged.get("weak_points", [])]
        assert [
            (field(e, "task_id"), e.get("fixed", False)) for e in judged.get("evaluations", [])
        ] == [(task_id, True)]
        stats = await ok(http.get("/tasks/stats"))
        records = {
            (o["kind"], o["remedy"]["remedy"]): o["remedy"] for o in stats.get("outcomes", [])
        }
        restart = records[("endpoint_failures", "heal:restart_component")]
        assert int(restart["successes"]) == 1

        # 5. ... and ranks by it when ai_domain fails again.
        await fail_calls(http, 1)

        async def ranked() -> list[dict[str, Any]] | None:
            for cycle in (await ok(http.get("/tasks/cycles"))).get("cycles", []):
                if cycle.get("cycle_id") == judged["cycle_id"]:
                    return None
                for proposal in cycle.get("proposals", []):
                    if field(proposal, "weak_point") == WEAK_POINT:
                        return list(proposal["candidates"])
            return None

        candidates = await eventually(
            ranked, within_s=90, what="a cycle after the new failure", every_s=0.25
        )
        assert candidates[0]["remedy"] == "heal:restart_component"
        assert round(candidates[0]["score"], 3) == 0.667
        assert (candidates[1]["remedy"], candidates[1]["score"]) == ("heal:diagnose_network", 0.5)
