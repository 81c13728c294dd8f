"""The learning loop under `grace up --with-examples`: the example domains' calls reach
the learning kernel as outcomes with no code of theirs, and a failure spike becomes a
pattern shared in memory, through the REST gateway."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.grace_up import RunningGrace, running_grace

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def grace(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGrace]:
    env = {
        **os.environ,
        "GRACE_AI_DOMAIN_OUTCOME_INTERVAL_S": "0.5",
        "GRACE_LEARNING_ANALYZE_INTERVAL_S": "1",
    }
    async with running_grace(tmp_path_factory.mktemp("learning-e2e"), env=env) as running:
        yield running


async def _until(
    http: httpx.AsyncClient, path: str, done: Any, within_s: float = 60.0
) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        response = await http.get(path)
        if response.status_code == 200 and done(response.json()):
            return dict(response.json())
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: {response.status_code} {response.text[:300]}")
        await asyncio.sleep(0.3)


async def test_domain_calls_reach_the_learning_kernel_as_outcomes(grace: RunningGrace) -> None:
    async with grace.http(timeout=30) as http:
        before = (await http.get("/learning/stats")).json()
        for i in range(20):
            answer = await http.post(
                "/domains/invoke/ai_domain/analyze",
                json={"input": {"text": f"caching makes reads fast {i}"}},
            )
            assert answer.status_code == 200, answer.text
        stats = await _until(
            http,
            "/learning/stats",
            lambda s: int(s.get("outcomes", 0)) >= int(before.get("outcomes", 0)) + 20,
        )
        assert int(stats["batches"]) >= 1


async def test_a_failure_spike_becomes_a_shared_pattern(grace: RunningGrace) -> None:
    outcomes = [
        {
            "action": "generate",
            "success": not (hour == 3 and i % 2 == 0),
            "latency_ms": 12.0,
            "input_size": 200,
            "hour": hour,
            "weekday": 4,
            "attempt": 1,
            "in_flight": 1,
            "sequence": hour * 40 + i + 1,
        }
        for hour in range(24)
        for i in range(40)
    ]
    async with grace.http(timeout=30) as http:
        taken = await http.post(
            "/learning/outcomes:batch",
            json={
                "domain_id": "probe_domain",
                "batch_id": "e2e-1",
                "capabilities": ["ml"],
                "outcomes": outcomes,
            },
        )
        assert taken.status_code == 200, taken.text
        assert taken.json()["accepted"] == 960
        found = await _until(
            http,
            "/learning/patterns?domain_id=probe_domain",
            lambda p: any(x.get("contribution_id") for x in p.get("patterns", [])),
        )
        [pattern] = found["patterns"]
        assert (pattern["kind"], pattern["factor"], pattern["bucket"]) == (
            "failure",
            "hour_of_day",
            "03:00-03:59 UTC",
        )
        shared = await http.get(f"/domains/memory/contribution/{pattern['contribution_id']}")
        assert shared.status_code == 200, shared.text
        contribution = shared.json()["contribution"]
        assert contribution["domain_id"] == "learning"
        assert contribution["contribution_type"] == "failed_patterns"
        assert contribution["content"]["evidence"]["in_bucket"]["failures"] == 20.0


async def test_the_learning_kernel_is_a_domain_found_by_capability(grace: RunningGrace) -> None:
    async with grace.http(timeout=30) as http:
        found = await _until(
            http,
            "/domains/find-by-capability/patterns",
            lambda r: any(d["domain"]["domain_id"] == "learning" for d in r.get("domains", [])),
        )
    [learning] = [d["domain"] for d in found["domains"] if d["domain"]["domain_id"] == "learning"]
    assert set(learning["capabilities"]) == {"learning", "patterns"}
