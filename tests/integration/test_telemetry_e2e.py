"""Unified telemetry under `grace up`: the seed's document workflow, run a few times, shows
in the collaboration graph as workflow steps, the orchestrator's calls to the example
domains and the bus's publishes and deliveries, and in non-zero cross-domain figures, all
through the REST gateway as an operator would read them."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from tests.grace_up import RunningGrace, running_grace

pytestmark = pytest.mark.slow

RUNS = 3
DOCUMENT_WORKFLOW = {
    "name": "telemetry_document",
    "steps": [
        {"id": "ingest", "domain_id": "data_domain", "action": "ingest"},
        {"id": "analyze", "domain_id": "ai_domain", "action": "analyze", "depends_on": ["ingest"]},
        {"id": "store", "domain_id": "memory_domain", "action": "store", "depends_on": ["analyze"]},
    ],
}
FAST_REPORTS = {
    "GRACE_ORCHESTRATOR_METRICS_INTERVAL_S": "0.5",
    "GRACE_EVENTBUS_METRICS_INTERVAL_S": "0.5",
    "GRACE_DATA_DOMAIN_HEARTBEAT_S": "0.5",
    "GRACE_AI_DOMAIN_HEARTBEAT_S": "0.5",
    "GRACE_MEMORY_DOMAIN_HEARTBEAT_S": "0.5",
}

Edges = dict[tuple[str, str, str], dict[str, Any]]


@pytest.fixture(scope="module")
async def grace(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGrace]:
    env = {**os.environ, **FAST_REPORTS}
    async with running_grace(tmp_path_factory.mktemp("telemetry-e2e"), env=env) as running:
        yield running


def _edges(graph: dict[str, Any]) -> Edges:
    return {(e["kind"], e["source"], e["target"]): e for e in graph.get("edges", [])}


def _count(edges: Edges, kind: str, source: str, target: str) -> int:
    edge = edges.get((f"TRAFFIC_KIND_{kind}", source, target))
    return int(edge["count"]) if edge else 0


async def _until(
    http: httpx.AsyncClient, path: str, done: Callable[[Any], bool], within_s: float = 60.0
) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        response = await http.get(path)
        if response.status_code == 200 and done(response.json()):
            return dict(response.json())
        if time.monotonic() > deadline:
            raise AssertionError(f"{path}: {response.status_code} {response.text[:2000]}")
        await asyncio.sleep(0.5)


async def test_the_document_workflow_shows_in_the_graph_and_the_cross_domain_figures(
    grace: RunningGrace,
) -> None:
    async with grace.http(timeout=60) as http:
        created = await http.post("/domains/workflows/create", json=DOCUMENT_WORKFLOW)
        assert created.status_code == 200, created.text
        workflow_id = created.json()["workflow_id"]
        for i in range(RUNS):
            executed = await http.post(
                f"/domains/workflows/execute/{workflow_id}",
                json={
                    "input": {
                        "document": {"title": f"Report {i}", "text": f"Caching is fast {i}."}
                    },
                    "wait": True,
                },
            )
            assert executed.status_code == 200, executed.text
            assert executed.json()["execution"]["state"] == "EXECUTION_STATE_SUCCEEDED"
        workflow = f"workflow:{workflow_id}"

        def complete(graph: dict[str, Any]) -> bool:
            edges = _edges(graph)
            return (
                all(
                    _count(edges, "STEP", workflow, d) >= RUNS
                    for d in ("data_domain", "ai_domain", "memory_domain")
                )
                and all(
                    _count(edges, "CALL", "orchestrator", d) >= RUNS
                    for d in ("data_domain", "ai_domain", "memory_domain")
                )
                and _count(edges, "PUBLISH", "data_domain", "data.ingested") >= RUNS
                and _count(edges, "DELIVERY", "ai_domain", "memory_domain") >= RUNS
            )

        graph = await _until(http, "/domains/system/collaboration-graph", complete)
        telemetry = (await http.get("/domains/system/telemetry")).json()
        overview = (await http.get("/domains/system/overview")).json()

    edges = _edges(graph)
    step = edges[("TRAFFIC_KIND_STEP", workflow, "ai_domain")]
    assert int(step["errors"]) == 0
    assert step["p99_latency_ms"] >= step["avg_latency_ms"] > 0
    assert {"orchestrator", "data_domain", "ai_domain", "memory_domain"} <= set(graph["nodes"])
    assert int(telemetry["total_requests"]) >= 3 * RUNS
    assert int(telemetry["cross_domain_calls"]) >= 3 * RUNS
    assert int(telemetry["events_published"]) >= RUNS
    assert int(telemetry["events_delivered"]) >= RUNS
    assert int(telemetry["workflow_steps"]) >= 3 * RUNS
    assert 0 < telemetry["collaboration_rate"] <= 1
    assert telemetry["p99_latency_ms"] >= telemetry["avg_latency_ms"] > 0
    domains = {d["domain_id"]: d for d in telemetry["domains"]}
    assert int(domains["data_domain"]["requests"]) >= RUNS
    assert int(domains["orchestrator"]["calls_made"]) >= 3 * RUNS
    assert domains["ai_domain"]["health"] in ("DOMAIN_HEALTH_HEALTHY", "DOMAIN_HEALTH_DEGRADED")
    assert overview["links"]["telemetry"] == "/domains/system/telemetry"
