"""The trigger mesh under `grace up --with-examples`, through the REST gateway: an event
matching a rule starts the seed document workflow once (however often it is published), an
event from a source without trust is refused, and a governance FORBID blocks a firing."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.grace_up import RunningGrace, running_grace
from tests.integration.test_seed_workflows import DOCUMENT_WORKFLOW, _document

pytestmark = pytest.mark.slow

WORD = "quillwort"


@pytest.fixture(scope="module")
async def grace(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGrace]:
    env = {**os.environ, "GRACE_GOVERNANCE_MODE": "enforce"}
    async with running_grace(tmp_path_factory.mktemp("triggers-e2e"), env=env) as running:
        yield running


async def _firings(http: httpx.AsyncClient, rule_id: str) -> list[dict[str, Any]]:
    response = await http.get("/kernels/triggers/firings", params={"rule_id": rule_id})
    assert response.status_code == 200, response.text
    return list(response.json().get("firings", []))


async def _settled(http: httpx.AsyncClient, rule_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 90
    while True:
        firings = await _firings(http, rule_id)
        if firings and firings[0]["state"] != "pending":
            return firings[0]
        assert time.monotonic() < deadline, f"rule {rule_id} did not fire: {firings}"
        await asyncio.sleep(0.3)


async def _rule(http: httpx.AsyncClient, rule: dict[str, Any]) -> None:
    response = await http.post("/kernels/triggers/rules", json={"rule": rule})
    assert response.status_code == 200, response.text


async def _publish(http: httpx.AsyncClient, event_id: str, event_type: str, source: str) -> None:
    response = await http.post(
        "/domains/events/publish",
        json={
            "id": event_id,
            "event_type": event_type,
            "source_domain": source,
            "subject": event_id,
            "data": _document(WORD),
        },
    )
    assert response.status_code == 200, response.text


async def test_an_event_starts_the_document_workflow_once_and_the_validators_refuse(
    grace: RunningGrace,
) -> None:
    async with grace.http(timeout=60) as http:
        created = await http.post("/domains/workflows/create", json=DOCUMENT_WORKFLOW)
        assert created.status_code == 200, created.text
        workflow_id = created.json()["workflow_id"]
        target = {"workflow_id": workflow_id}
        await _rule(
            http,
            {
                "rule_id": "submitted-documents",
                "pattern": "document.submitted",
                "condition": "data.document.text",
                "action": "workflow",
                "target": target,
                "input": {"document": "data.document"},
            },
        )
        await _rule(
            http,
            {
                "rule_id": "trusted-only",
                "pattern": "document.untrusted",
                "action": "workflow",
                "target": target,
                "min_trust": 0.5,
            },
        )
        await _rule(
            http,
            {
                "rule_id": "frozen",
                "pattern": "document.frozen",
                "action": "workflow",
                "target": target,
            },
        )
        forbid = await http.post(
            "/kernels/governance/policies",
            json={
                "policy": {
                    "policy_id": "no-frozen-documents",
                    "description": "frozen documents are not processed",
                    "action": "document.frozen",
                    "effect": "EFFECT_FORBID",
                }
            },
        )
        assert forbid.status_code == 200, forbid.text

        # The bus may deliver before the new subscriptions exist: publish until one fires.
        deadline = time.monotonic() + 60
        while not await _firings(http, "submitted-documents"):
            assert time.monotonic() < deadline, "no firing for document.submitted"
            await _publish(http, "doc-1", "document.submitted", "uploader")
            await asyncio.sleep(1.0)
        for _ in range(3):  # the same event again: no second firing
            await _publish(http, "doc-1", "document.submitted", "uploader")
        fired = await _settled(http, "submitted-documents")
        assert fired["state"] == "succeeded", fired
        execution_id = fired["result"]["execution_id"]

        await _publish(http, "doc-2", "document.untrusted", "stranger")
        await _publish(http, "doc-3", "document.frozen", "uploader")
        refused = await _settled(http, "trusted-only")
        assert refused["state"] == "refused", refused
        denied = await _settled(http, "frozen")
        assert denied["state"] == "denied", denied

        await asyncio.sleep(2.0)
        assert len(await _firings(http, "submitted-documents")) == 1
        executions = await http.get(
            "/domains/workflows/executions", params={"workflow_id": workflow_id, "page_size": 100}
        )
        assert executions.status_code == 200, executions.text
        ids = [e["execution_id"] for e in executions.json().get("executions", [])]
        assert ids == [execution_id]
