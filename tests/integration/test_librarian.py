"""The librarian under `grace up --with-examples`, through the REST gateway and its own port.

A workflow step indexes documents, `GET /librarian/search` finds them, memory_domain's
`search_similar` asks the librarian for neighbours, a document a domain stores and a
workflow's outputs are indexed from their events, and the seed's
`curl localhost:8130/health` works on the kernel's port.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.grace_up import RunningGrace, running_grace

pytestmark = pytest.mark.slow

# Words no other test indexes.
WORD = "hornwrack"
INGESTED_WORD = "marshwillow"

INDEX_WORKFLOW = {
    "name": "index_notes",
    "steps": [
        {
            "id": "first",
            "domain_id": "librarian",
            "action": "index",
            "data": {
                "id": "notes-1",
                "title": f"The {WORD} incident",
                "text": f"The {WORD} gateway port timed out; restarting the gateway fixed it.",
                "source": "operators",
                "metadata": {"team": "ops"},
            },
        },
        {
            "id": "second",
            "domain_id": "librarian",
            "action": "index",
            "data": {
                "id": "notes-2",
                "text": f"Another {WORD} gateway timeout, fixed by restarting the gateway.",
                "source": "operators",
            },
        },
        {
            "id": "similar",
            "domain_id": "memory_domain",
            "action": "search_similar",
            "depends_on": ["first", "second"],
            "data": {"id": "notes-1"},
        },
    ],
}


@pytest.fixture(scope="module")
async def grace(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGrace]:
    async with running_grace(tmp_path_factory.mktemp("librarian")) as platform:
        yield platform


@pytest.fixture
async def http(grace: RunningGrace) -> AsyncIterator[httpx.AsyncClient]:
    async with grace.http(timeout=60) as client:
        yield client


async def _execute(http: httpx.AsyncClient, workflow: dict[str, Any]) -> dict[str, Any]:
    created = await http.post("/domains/workflows/create", json=workflow)
    assert created.status_code == 200, created.text
    executed = await http.post(
        f"/domains/workflows/execute/{created.json()['workflow_id']}", json={"wait": True}
    )
    assert executed.status_code == 200, executed.text
    execution: dict[str, Any] = executed.json()["execution"]
    assert execution["state"] == "EXECUTION_STATE_SUCCEEDED", execution
    return execution


async def test_a_document_indexed_by_a_workflow_step_is_found_through_the_gateway(
    http: httpx.AsyncClient,
) -> None:
    execution = await _execute(http, INDEX_WORKFLOW)

    # Filtered by source: the workflow's own output is indexed too (from workflow.completed).
    found = await http.get("/librarian/search", params={"query": WORD, "source": "operators"})
    assert found.status_code == 200, found.text
    body = found.json()
    # notes-1 is longer, but its title holds the word.
    assert [h["document"]["id"] for h in body["hits"]] == ["notes-1", "notes-2"]
    assert body["mode"] == "SEARCH_MODE_FULL_TEXT"
    highlight = body["hits"][0]["highlights"][0]
    assert highlight["field"] == "title"

    filtered = await http.get("/librarian/search", params={"query": WORD, "metadata": "team=ops"})
    assert [h["document"]["id"] for h in filtered.json()["hits"]] == ["notes-1"]

    document = await http.get("/librarian/documents/notes-1")
    assert document.status_code == 200, document.text
    assert document.json()["document"]["source"] == "operators"

    # memory_domain.search_similar asked the librarian for the neighbours of notes-1.
    similar = execution["output"]["similar"]
    assert [r["id"] for r in similar["results"]][:1] == ["notes-2"]

    near = await http.get("/librarian/documents/notes-1/similar")
    assert near.status_code == 200, near.text
    assert [h["document"]["id"] for h in near.json()["hits"]][:1] == ["notes-2"]

    stats = await http.get("/librarian/stats")
    assert stats.status_code == 200, stats.text
    assert int(stats.json()["documents"]) >= 2

    deleted = await http.delete("/librarian/documents/notes-2")
    assert deleted.status_code == 200, deleted.text
    again = await http.get("/librarian/search", params={"query": WORD, "source": "operators"})
    assert [h["document"]["id"] for h in again.json()["hits"]] == ["notes-1"]
    missing = await http.get("/librarian/documents/notes-2")
    assert missing.status_code == 404


async def test_a_stored_document_and_a_workflow_output_are_indexed_from_their_events(
    http: httpx.AsyncClient,
) -> None:
    workflow = {
        "name": "ingest_only",
        "steps": [
            {
                "id": "ingest",
                "domain_id": "data_domain",
                "action": "ingest",
                "data": {
                    "document": {"title": "Field notes", "text": f"The {INGESTED_WORD} grows."}
                },
            }
        ],
    }
    execution = await _execute(http, workflow)
    document_id = execution["output"]["ingest"]["document_id"]

    # data_domain's data.ingested carries the document; workflow.completed the outputs.
    expected = {
        f"data_domain.{document_id}": "data_domain",
        f"workflow.{execution['execution_id']}": "workflow",
    }
    found: dict[str, str] = {}
    for _ in range(120):
        answer = await http.get("/librarian/search", params={"query": INGESTED_WORD})
        found = {h["document"]["id"]: h["document"]["source"] for h in answer.json()["hits"]}
        if len(found) >= len(expected):
            break
        await asyncio.sleep(0.5)
    assert found == expected


async def _ids_eventually(
    http: httpx.AsyncClient, query: str, want: set[str], source: str = ""
) -> set[str]:
    """The ids a search finds, polled until they are `want` (events arrive asynchronously)."""
    found: set[str] = set()
    for _ in range(120):
        answer = await http.get("/librarian/search", params={"query": query, "source": source})
        found = {h["document"]["id"] for h in answer.json()["hits"]}
        if found == want:
            break
        await asyncio.sleep(0.5)
    return found


async def test_a_contribution_is_indexed_and_leaves_the_index_when_retracted(
    http: httpx.AsyncClient,
) -> None:
    contributed = await http.post(
        "/domains/memory/contribute",
        json={
            "domain_id": "ai_domain",
            "contribution_type": "optimization",
            "content": {"technique": f"{WORD}-caching", "improvement": "2x faster"},
        },
    )
    assert contributed.status_code == 200, contributed.text
    contribution_id = contributed.json()["contribution"]["contribution_id"]
    indexed = {f"memory.{contribution_id}"}

    assert await _ids_eventually(http, f"{WORD} caching", indexed, "memory") == indexed

    retracted = await http.post(
        f"/domains/memory/retract/{contribution_id}",
        json={"domain_id": "ai_domain", "reason": "superseded"},
    )
    assert retracted.status_code == 200, retracted.text
    assert await _ids_eventually(http, f"{WORD} caching", set(), "memory") == set()


async def test_the_kernel_port_answers_the_seed_curl_lines(grace: RunningGrace) -> None:
    async with httpx.AsyncClient(
        base_url=f"http://{grace.addresses['librarian']}", timeout=30
    ) as kernel:
        health = await kernel.get("/health")
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "kernel": "librarian"}
        # In a secure Grace only health answers on the kernel's plain-HTTP side: the data
        # is the authenticated gateway's.
        searched = await kernel.get("/search", params={"query": WORD})
        assert searched.status_code == 401
