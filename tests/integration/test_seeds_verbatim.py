"""Every code and curl example of seeds 000, 001 and 003, sent as written, through the REST
gateway of one `grace up --with-examples`.

Each test names the seed and the example it runs. The bodies are the seeds' own JSON (their
Python dicts as JSON; where a seed uses a variable such as `doc`, the test gives it a
value), posted with httpx; each test asserts what a reader of the seed expects to happen.
Tests that change the running system (stopping and healing components, re-registering
ai_domain at the seed's port) come last.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import httpx
import pytest

from tests.grace_up import RunningGrace, running_grace
from tests.support import eventually

pytestmark = pytest.mark.slow

# The seeds' variable `doc` / `document`: a document a reader would send.
DOC = (
    "Restarting the component fixed the port timeout. The registry keeps every domain "
    "healthy, and the result was great."
)
CODE = (
    "def retry(call, attempts=3):\n"
    "    for attempt in range(attempts):\n"
    "        try:\n"
    "            return call()\n"
    "        except TimeoutError:\n"
    "            continue\n"
    "    raise TimeoutError('retry failed')\n"
)
FINAL_STATES = {
    "EXECUTION_STATE_SUCCEEDED",
    "EXECUTION_STATE_ROLLED_BACK",
    "EXECUTION_STATE_COMPENSATION_FAILED",
}


@pytest.fixture(scope="module")
async def grace(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGrace]:
    """One platform for the module; its process groups are killed after the last test."""
    async with running_grace(tmp_path_factory.mktemp("seeds-verbatim")) as platform:
        yield platform


@pytest.fixture
async def http(grace: RunningGrace) -> AsyncIterator[httpx.AsyncClient]:
    async with grace.http(timeout=120) as client:
        yield client


@pytest.fixture
async def as_ai_domain(grace: RunningGrace) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway as ai_domain itself: in a secure Grace an event published in a domain's
    name comes from that domain (its token), or the bus refuses it unsigned."""
    async with grace.http(timeout=120, token=grace.domain_token("ai_domain")) as client:
        # Every server re-reads the token file within GRACE_TOKEN_REFRESH_S (1 s): wait
        # until the gateway, the registry and the bus all know the new token.
        async def known() -> bool:
            answers = [
                await client.get("/domains/list"),
                await client.get("/domains/events/stats"),
            ]
            return all(a.status_code == 200 for a in answers)

        await eventually(known, within_s=10, what="the new token to be known", every_s=0.2)
        yield client


async def ok(response: Awaitable[httpx.Response]) -> dict[str, Any]:
    answered = await response
    assert answered.status_code == 200, answered.text
    body: dict[str, Any] = answered.json()
    return body


async def create_and_execute(
    http: httpx.AsyncClient, workflow: dict[str, Any], execution_input: dict[str, Any] | None = None
) -> dict[str, Any]:
    """`create_workflow(...)` then `execute_workflow(workflow.workflow_id)`, as the seeds
    call them; returns the execution once it has ended."""
    created = await ok(http.post("/domains/workflows/create", json=workflow))
    workflow_id = created["workflow_id"]
    if execution_input is None:
        started = await ok(http.post(f"/domains/workflows/execute/{workflow_id}"))
    else:
        started = await ok(
            http.post(f"/domains/workflows/execute/{workflow_id}", json={"input": execution_input})
        )
    execution_id = started["execution"]["execution_id"]

    async def ended() -> dict[str, Any] | None:
        got = await ok(http.get(f"/domains/workflows/executions/{execution_id}"))
        execution: dict[str, Any] = got["execution"]
        return execution if execution["state"] in FINAL_STATES else None

    result: dict[str, Any] = await eventually(
        ended, within_s=180, what=f"execution {execution_id} to end", every_s=0.2
    )
    return result


def steps(execution: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["step_id"]: step for step in execution["steps"]}


def succeeded(execution: dict[str, Any]) -> None:
    assert execution["state"] == "EXECUTION_STATE_SUCCEEDED", (
        execution["error"],
        [(s["step_id"], s["state"], s["error"]) for s in execution["steps"]],
    )


async def history(http: httpx.AsyncClient, pattern: str) -> list[dict[str, Any]]:
    got = await ok(
        http.get("/domains/events/history", params={"pattern": pattern, "page_size": 1000})
    )
    events: list[dict[str, Any]] = got.get("events", [])
    return events


# -- seed 000: the event bus ------------------------------------------------------------


async def test_seed_000_example_2_publishes_an_event_the_memory_domain_receives(
    http: httpx.AsyncClient, as_ai_domain: httpx.AsyncClient
) -> None:
    published = await ok(
        as_ai_domain.post(
            "/domains/events/publish",
            json={
                "event_type": "ml.prediction",
                "source_domain": "ai_domain",
                "data": {"prediction": "positive"},
            },
        )
    )
    assert published["sequence"]
    # The Python form of the same example, with its confidence.
    await ok(
        as_ai_domain.post(
            "/domains/events/publish",
            json={
                "event_type": "ml.prediction",
                "source_domain": "ai_domain",
                "data": {"prediction": "positive", "confidence": 0.95},
            },
        )
    )
    events = await history(http, "ml.prediction")
    assert [e["data"] for e in events][-2:] == [
        {"prediction": "positive"},
        {"prediction": "positive", "confidence": 0.95},
    ]

    # "Memory domain (subscribed to ml.*) automatically receives it."
    async def received() -> bool:
        got = await ok(http.post("/domains/invoke/memory_domain/recent_events", json={}))
        seen = [e["data"] for e in got["output"]["events"] if e["event_type"] == "ml.prediction"]
        return {"prediction": "positive", "confidence": 0.95} in seen

    await eventually(
        received, within_s=60, what="memory_domain to receive ml.prediction", every_s=0.2
    )


async def test_seed_000_the_healers_event_without_a_source_is_published_as_the_caller(
    http: httpx.AsyncClient,
) -> None:
    await ok(
        http.post(
            "/domains/events/publish",
            json={
                "event_type": "healing.completed",
                "data": {"component": "ai_domain", "success": True},
            },
        )
    )
    sent = {"component": "ai_domain", "success": True}
    [event] = [e for e in await history(http, "healing.completed") if e["data"] == sent]
    assert event["source_domain"] == "admin"  # the caller: grace up's admin token


async def test_seed_001_publishes_an_ml_prediction_the_seeds_way(
    http: httpx.AsyncClient, as_ai_domain: httpx.AsyncClient
) -> None:
    # event_bus.publish('ml.prediction', {...}): a type and data, the caller as source.
    await ok(
        as_ai_domain.post(
            "/domains/events/publish",
            json={
                "event_type": "ml.prediction",
                "data": {"model": "sentiment", "prediction": "positive", "confidence": 0.95},
            },
        )
    )
    [event] = [e for e in await history(http, "ml.prediction") if e["data"].get("model")]
    assert event["source_domain"] == "ai_domain"


# -- seed 000: shared memory ------------------------------------------------------------


async def test_seed_000_example_3_contributes_knowledge_that_a_query_finds(
    http: httpx.AsyncClient,
) -> None:
    contributed = await ok(
        http.post(
            "/domains/memory/contribute",
            json={
                "domain_id": "ai_domain",
                "contribution_type": "optimization",
                "content": {"technique": "caching", "improvement": "2x faster"},
            },
        )
    )
    contribution_id = contributed["contribution"]["contribution_id"]
    found = await ok(http.get("/domains/memory/query", params={"query": "caching"}))
    assert contribution_id in [r["contribution"]["contribution_id"] for r in found["results"]]


async def test_seed_000_the_healing_insight_passes_min_confidence_once_it_has_evidence(
    http: httpx.AsyncClient,
) -> None:
    # shared_domain_memory.contribute(domain_id='healing_domain', ...)
    contributed = await ok(
        http.post(
            "/domains/memory/contribute",
            json={
                "domain_id": "healing_domain",
                "contribution_type": "optimization",
                "content": {
                    "issue": "port_timeout",
                    "solution": "restart_component",
                    "success_rate": 0.95,
                },
            },
        )
    )
    contribution_id = contributed["contribution"]["contribution_id"]

    # query_collective(query='port timeout', min_confidence=0.7)
    async def query() -> list[str]:
        got = await ok(
            http.get(
                "/domains/memory/query", params={"query": "port timeout", "min_confidence": 0.7}
            )
        )
        return [r["contribution"]["contribution_id"] for r in got.get("results", [])]

    # A fresh contribution is at 0.5: it is not yet trusted at 0.7 ...
    assert contribution_id not in await query()
    # ... until another domain vouches for it and applying it works ("gets smarter").
    await ok(
        http.post(
            f"/domains/memory/verify/{contribution_id}",
            json={"domain_id": "memory_domain", "reason": "seen it work"},
        )
    )
    await ok(
        http.post(
            f"/domains/memory/apply/{contribution_id}",
            json={"domain_id": "ai_domain", "outcome": "OUTCOME_SUCCESS"},
        )
    )
    assert contribution_id in await query()


# -- seed 000 and 001: workflows --------------------------------------------------------


async def test_seed_000_process_document_ingests_analyzes_and_stores(
    http: httpx.AsyncClient,
) -> None:
    execution = await create_and_execute(
        http,
        {
            "name": "process_document",
            "steps": [
                {"domain_id": "data_domain", "action": "ingest", "data": {"document": DOC}},
                {"domain_id": "ai_domain", "action": "analyze", "depends_on": ["step_1"]},
                {"domain_id": "memory_domain", "action": "store", "depends_on": ["step_2"]},
            ],
        },
    )
    succeeded(execution)
    by_id = steps(execution)
    assert by_id["step_1"]["output"]["document_id"].startswith("doc_")
    assert by_id["step_2"]["output"]["sentiment"]["label"] == "positive"
    contribution_id = by_id["step_3"]["output"]["contribution_id"]
    stored = await ok(http.get(f"/domains/memory/contribution/{contribution_id}"))
    assert (
        stored["contribution"]["content"]["document_id"] == by_id["step_1"]["output"]["document_id"]
    )
    proof = await ok(http.get(f"/domains/workflows/executions/{execution['execution_id']}/proof"))
    assert [r["step_id"] for r in proof["proof"]["records"]] == ["step_1", "step_2", "step_3"]


async def test_seed_000_example_4_analyze_code_creates_and_runs(http: httpx.AsyncClient) -> None:
    body = {
        "name": "analyze_code",
        "steps": [
            {"domain_id": "memory_domain", "action": "search", "data": {}},
            {
                "domain_id": "ai_domain",
                "action": "analyze",
                "data": {},
                "depends_on": ["step_1"],
            },
        ],
    }
    execution = await create_and_execute(http, body)
    succeeded(execution)
    analysis = steps(execution)["step_2"]["output"]
    # No text of its own: the analysis is of what the search found.
    assert analysis["source"] == "results"
    assert analysis["context_results"] == len(steps(execution)["step_1"]["output"]["results"])


async def test_seed_000_code_analysis_searches_analyzes_and_governance_verifies(
    http: httpx.AsyncClient,
) -> None:
    # "Analyze this code": the scenario's workflow, the code as the execution's input.
    execution = await create_and_execute(
        http,
        {
            "name": "code_analysis",
            "steps": [
                {"domain": "memory_domain", "action": "search_similar"},
                {"domain": "ai_domain", "action": "analyze", "depends_on": ["step_1"]},
                {"domain": "governance_domain", "action": "verify", "depends_on": ["step_2"]},
            ],
        },
        {"code": CODE},
    )
    succeeded(execution)
    by_id = steps(execution)
    assert by_id["step_1"]["domain_id"] == "memory_domain"
    assert by_id["step_2"]["output"]["keywords"][0]["word"] in CODE
    verdict = by_id["step_3"]["output"]
    assert verdict["allowed"] is True
    decision = await ok(http.get(f"/kernels/governance/decisions/{verdict['decision_id']}"))
    assert decision["decision"]["actor"] == "governance_domain"
    assert decision["decision"]["action"] == "content.verify"
    # "AI publishes event: ml.analysis_complete".
    assert await history(http, "ml.analysis_complete")


async def test_seed_001_document_processing_runs_all_four_domains(
    http: httpx.AsyncClient,
) -> None:
    execution = await create_and_execute(
        http,
        {
            "name": "document_processing",
            "steps": [
                {"domain": "data_domain", "action": "ingest_document", "data": DOC},
                {"domain": "ai_domain", "action": "analyze_content", "depends_on": "step_1"},
                {
                    "domain": "memory_domain",
                    "action": "store_with_metadata",
                    "depends_on": "step_2",
                },
                {
                    "domain": "governance_domain",
                    "action": "verify_compliance",
                    "depends_on": "step_3",
                },
            ],
        },
    )
    succeeded(execution)
    by_id = steps(execution)
    document_id = by_id["step_1"]["output"]["document_id"]
    got = await ok(
        http.post("/domains/invoke/data_domain/get", json={"input": {"document_id": document_id}})
    )
    assert got["output"]["text"] == DOC
    stored = by_id["step_3"]["output"]
    assert stored["metadata"]["document_id"] == document_id
    assert stored["metadata"]["execution_id"] == execution["execution_id"]
    compliance = by_id["step_4"]["output"]
    assert compliance["allowed"] is True
    assert compliance["action"] == "compliance.verify"
    assert compliance["subject"] == f"contribution:{stored['contribution_id']}"


async def test_the_seeds_step_shapes_are_the_canonical_workflow(http: httpx.AsyncClient) -> None:
    created = await ok(
        http.post(
            "/domains/workflows/create",
            json={
                "name": "document_processing",
                "steps": [
                    {"domain": "data_domain", "action": "ingest_document", "data": DOC},
                    {"domain": "ai_domain", "action": "analyze_content", "depends_on": "step_1"},
                ],
            },
        )
    )
    [first, second] = created["workflow"]["steps"]
    assert (first["domain_id"], first["data"]) == ("data_domain", {"value": DOC})
    assert (second["domain_id"], second["depends_on"]) == ("ai_domain", ["step_1"])
    both = await http.post(
        "/domains/workflows/create",
        json={
            "name": "ambiguous",
            "steps": [{"domain": "ai_domain", "domain_id": "ai_domain", "action": "analyze"}],
        },
    )
    assert both.status_code == 400, both.text
    assert "steps[0].domain" in both.json()["error"]["message"]


# -- seed 003: the main API and kernel ports -------------------------------------------


async def test_seed_003_curl_health_checks_everything(http: httpx.AsyncClient) -> None:
    health = await ok(http.get("/health"))
    assert health["status"] == "SERVING"
    assert {"registry", "eventbus", "orchestrator", "guardian"} <= set(health["services"])


async def test_seed_003_kernel_ports_health_check_and_the_port_table(
    http: httpx.AsyncClient, grace: RunningGrace
) -> None:
    checked = await ok(http.get("/kernel-ports/health-check"))
    assert checked["all_healthy"] is True
    assert {c["component_name"] for c in checked["checks"]} >= {"immune", "governance"}
    listed = await ok(http.get("/kernel-ports", params={"page_size": 100}))
    names = [c["name"] for c in listed["components"]]
    assert names == [c.name for c in grace.components]
    one = await ok(http.get("/kernel-ports/immune"))
    assert one["component"]["port"] == int(grace.addresses["immune"].rsplit(":", 1)[1])
    assert one["component"]["state"] == "COMPONENT_STATE_SERVING"


# -- the healing examples: they restart things, so they come late ----------------------


async def _component(http: httpx.AsyncClient, name: str) -> dict[str, Any]:
    got = await ok(http.get(f"/guardian/components/{name}"))
    component: dict[str, Any] = got["component"]
    return component


async def test_seed_003_network_healing_body_restarts_the_named_kernel(
    http: httpx.AsyncClient, grace: RunningGrace
) -> None:
    # The seed's body names librarian_kernel on 8130; this platform's self-healing kernel
    # (seed 003's 8131) is the immune kernel, healed with the same body.
    before = await _component(http, "immune")
    port = int(grace.addresses["immune"].rsplit(":", 1)[1])
    healed = await ok(
        http.post(
            "/network-healer/heal",
            json={
                "component_name": "immune",
                "port": port,
                "issue_type": "port_not_listening",
                "action": "restart_component",
            },
        )
    )
    assert healed["success"] is True, healed
    assert healed["playbook"] == "restart_component"
    assert healed["component"]["pid"] != before["pid"]
    assert healed["component"]["state"] == "COMPONENT_STATE_SERVING"

    async def reason_recorded() -> bool:
        started = await history(http, "healing.started")
        return any(e["data"].get("reason") == f"port_not_listening on port {port}" for e in started)

    await eventually(
        reason_recorded, within_s=60, what="the heal's reason in healing.started", every_s=0.2
    )


async def test_seed_003_healing_a_kernel_this_platform_does_not_run_names_it(
    http: httpx.AsyncClient, grace: RunningGrace
) -> None:
    if any(c.name == "librarian_kernel" for c in grace.components):
        pytest.skip("this topology runs a librarian_kernel")
    for body in (
        {"component_name": "librarian_kernel"},
        {
            "component_name": "librarian_kernel",
            "port": 8130,
            "issue_type": "port_not_listening",
            "action": "restart_component",
        },
    ):
        refused = await http.post(
            "/network-healer/heal",
            content=_json(body),
            headers={"Content-Type": "application/x-www-form-urlencoded"},  # curl -d's default
        )
        assert refused.status_code == 404, refused.text
        assert "librarian_kernel" in refused.json()["error"]["message"]


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


async def test_seed_000_full_system_heal_through_the_orchestrator_restarts_a_stopped_domain(
    http: httpx.AsyncClient,
) -> None:
    await ok(http.post("/guardian/components/data_domain/stop", json={}))
    assert (await _component(http, "data_domain"))["state"] == "COMPONENT_STATE_STOPPED"

    execution = await create_and_execute(
        http,
        {
            "name": "full_system_heal",
            "steps": [
                {"domain": "diagnostics", "action": "scan"},
                {"domain": "healing", "action": "fix"},
                {"domain": "verification", "action": "verify"},
            ],
        },
    )
    succeeded(execution)
    by_id = steps(execution)
    assert {s["domain_id"] for s in by_id.values()} == {"immune"}
    heals = by_id["step_2"]["output"]["heals"]
    assert [(h["component"], h["success"]) for h in heals] == [("data_domain", True)]
    assert (await _component(http, "data_domain"))["state"] == "COMPONENT_STATE_SERVING"


async def test_seed_000_guardian_runs_the_full_system_heal_workflow(
    http: httpx.AsyncClient,
) -> None:
    await ok(http.post("/guardian/components/memory_domain/stop", json={}))

    healed = await ok(http.post("/network-healer/heal", json={"workflow": "full_system_heal"}))

    assert healed["success"] is True, healed
    assert healed["workflow"] == "full_system_heal"
    assert [(f["check"], f["ok"]) for f in healed["findings"]] == [
        ("scan", True),
        ("fix", True),
        ("verify", True),
    ]
    scan, fix, verify = (f["detail"] for f in healed["findings"])
    assert "memory_domain" in scan
    assert "memory_domain: restart_component ok" in fix
    assert "memory_domain" in verify
    assert (await _component(http, "memory_domain"))["state"] == "COMPONENT_STATE_SERVING"
    execution = await ok(http.get(f"/domains/workflows/executions/{healed['execution_id']}"))
    assert execution["execution"]["state"] == "EXECUTION_STATE_SUCCEEDED"


# -- registrations: they re-point live domains at the seeds' ports, so they come last ---


async def test_seed_000_kernels_and_new_domains_register_and_subscribe(
    http: httpx.AsyncClient,
) -> None:
    # With Kernel Port Manager: kernels register as domains.
    registered = await ok(
        http.post(
            "/domains/register",
            json={
                "domain_id": "librarian_kernel",
                "port": 8130,
                "capabilities": ["search", "indexing", "knowledge"],
            },
        )
    )
    assert registered["created"] is True
    found = await ok(http.get("/domains/find-by-capability/indexing"))
    # Beside the platform's own librarian, which offers indexing too.
    assert "librarian_kernel" in [c["domain"]["domain_id"] for c in found["domains"]]
    # Next steps 2 and 3: each domain registers, then subscribes to ml.*.
    await ok(
        http.post(
            "/domains/register",
            json={"domain_id": "my_domain", "port": 8200, "capabilities": []},
        )
    )
    subscribed = await ok(
        http.post("/domains/events/subscribe", json={"domain_id": "my_domain", "pattern": "ml.*"})
    )
    assert subscribed["subscription"]["domain_id"] == "my_domain"


async def test_seed_000_example_1_re_registers_ai_domain_without_wiping_it(
    http: httpx.AsyncClient, as_ai_domain: httpx.AsyncClient
) -> None:
    before = await ok(http.get("/domains/domain/ai_domain"))
    assert before["domain"]["version"] == "1.0.0"
    assert before["domain"]["public_key"]

    # Only ai_domain itself may re-register its record (anyone else: 403).
    registered = await ok(
        as_ai_domain.post(
            "/domains/register",
            json={
                "domain_id": "ai_domain",
                "port": 8202,
                "capabilities": ["chat", "ml", "prediction"],
            },
        )
    )

    assert registered["created"] is False
    domain = registered["domain"]
    assert domain["capabilities"] == ["chat", "ml", "prediction"]
    assert domain["port"] == 8202
    assert domain["version"] == "1.0.0"
    assert domain["public_key"] == before["domain"]["public_key"]
    assert {"version", "public_key"} <= set(registered["kept_fields"])
    assert "capabilities" in registered["changed_fields"]
    found = await ok(http.get("/domains/find-by-capability/prediction"))
    assert [c["domain"]["domain_id"] for c in found["domains"]] == ["ai_domain"]
