"""The seeds' workflows end to end, through the REST gateway of `grace up --with-examples`.

Every component and the example domains run as their own processes under Guardian. The
document workflow (data_domain ingest -> ai_domain analyze -> memory_domain store) succeeds
and leaves its document and its analysis behind; a workflow whose third step fails rolls the
first two back, and their effects are gone; every execution's proof verifies offline, with
`grace verify-proof` too, and a tampered copy does not.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from services.orchestrator.proof import digest, load_proof, verify_proof
from tests.grace_up import PROJECT_ROOT, RunningGrace, running_grace

pytestmark = pytest.mark.slow

# Words no other test contributes to shared memory, so a query for them finds only what the
# workflow under test stored.
SUCCESS_WORD = "quillwort"
ROLLBACK_WORD = "bramblefinch"

DOCUMENT_WORKFLOW = {
    "name": "process_document",
    "steps": [
        {"id": "ingest", "domain_id": "data_domain", "action": "ingest"},
        {"id": "analyze", "domain_id": "ai_domain", "action": "analyze", "depends_on": ["ingest"]},
        {"id": "store", "domain_id": "memory_domain", "action": "store", "depends_on": ["analyze"]},
    ],
}
# Ingest, then store in shared memory, then an analysis of a blank text: ai_domain refuses it
# with INVALID_ARGUMENT, which is permanent, so the third step fails on its first attempt.
FAILING_WORKFLOW = {
    "name": "process_document_broken",
    "steps": [
        {"id": "ingest", "domain_id": "data_domain", "action": "ingest"},
        {
            "id": "store",
            "domain_id": "memory_domain",
            "action": "store",
            "depends_on": ["ingest"],
            "data": {
                "summary": "${steps.ingest.output.text}",
                "keywords": [ROLLBACK_WORD],
                "document_id": "${steps.ingest.output.document_id}",
                "title": "${steps.ingest.output.title}",
            },
        },
        {
            "id": "analyze",
            "domain_id": "ai_domain",
            "action": "analyze",
            "depends_on": ["store"],
            "data": {"text": "   "},
        },
    ],
}


def _document(word: str) -> dict[str, Any]:
    return {
        "document": {
            "title": f"Notes on the {word}",
            "text": (
                f"The {word} is a reliable plant. Every {word} grows fast near water. "
                f"Gardeners like the {word}."
            ),
        }
    }


@pytest.fixture(scope="module")
async def grace(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGrace]:
    """One platform for the module; its process group is killed after the last test."""
    async with running_grace(tmp_path_factory.mktemp("seed-workflows")) as platform:
        yield platform


@pytest.fixture
async def http(grace: RunningGrace) -> AsyncIterator[httpx.AsyncClient]:
    async with grace.http() as client:
        yield client


async def _run(
    http: httpx.AsyncClient, workflow: dict[str, Any], document: dict[str, Any]
) -> dict[str, Any]:
    """Creates the workflow and executes it to the end; returns the execution."""
    created = await http.post("/domains/workflows/create", json=workflow)
    assert created.status_code == 200, created.text
    workflow_id = created.json()["workflow_id"]
    executed = await http.post(
        f"/domains/workflows/execute/{workflow_id}", json={"input": document, "wait": True}
    )
    assert executed.status_code == 200, executed.text
    execution: dict[str, Any] = executed.json()["execution"]
    # The record the orchestrator keeps says the same as the answer.
    fetched = await http.get(f"/domains/workflows/executions/{execution['execution_id']}")
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["execution"]["state"] == execution["state"]
    return dict(fetched.json()["execution"])


def _nanos(rfc3339: str) -> int:
    stamp = Timestamp()
    stamp.FromJsonString(rfc3339)
    return stamp.ToNanoseconds()


def _steps(execution: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["step_id"]: step for step in execution["steps"]}


async def _save_proof(http: httpx.AsyncClient, execution_id: str, path: Path) -> dict[str, Any]:
    """Saves the proof as `curl .../proof > FILE` would; returns it as JSON."""
    response = await http.get(f"/domains/workflows/executions/{execution_id}/proof")
    assert response.status_code == 200, response.text
    await asyncio.to_thread(path.write_text, response.text)
    return dict(response.json()["proof"])


async def _verify_proof_cli(path: Path, data_dir: Path) -> tuple[int, str]:
    """Runs `grace verify-proof FILE` as a user of that Grace would (its data dir in
    GRACE_DATA_DIR, so the orchestrator's key is trusted); returns the exit code and the
    verdict (the output after the line naming the key checked)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "verify-proof",
        str(path),
        env={**os.environ, "GRACE_DATA_DIR": str(data_dir)},
        cwd=PROJECT_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    checked, _, verdict = out.decode().partition("\n")
    # A secure Grace's data dir holds its CA: the signer is checked against it.
    assert checked == "checked against the Grace CA bundle", checked
    return proc.returncode, verdict


def _verdict(path: Path) -> Any:
    return verify_proof(load_proof(path.read_text()))


async def _memory_ids(http: httpx.AsyncClient, word: str) -> list[str]:
    """Ids of the contributions a shared-memory query for `word` finds."""
    response = await http.get("/domains/memory/query", params={"query": word})
    assert response.status_code == 200, response.text
    return [r["contribution"]["contribution_id"] for r in response.json().get("results", [])]


async def test_the_document_workflow_succeeds_and_leaves_its_document_and_analysis(
    grace: RunningGrace, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    execution = await _run(http, DOCUMENT_WORKFLOW, _document(SUCCESS_WORD))

    assert execution["state"] == "EXECUTION_STATE_SUCCEEDED", execution
    steps = _steps(execution)
    assert {s: step["state"] for s, step in steps.items()} == dict.fromkeys(
        ("ingest", "analyze", "store"), "STEP_STATE_SUCCEEDED"
    )
    document_id = steps["ingest"]["output"]["document_id"]
    assert steps["analyze"]["output"]["keywords"][0]["word"] == SUCCESS_WORD
    contribution_id = steps["store"]["output"]["contribution_id"]

    got = await http.post(
        "/domains/invoke/data_domain/get", json={"input": {"document_id": document_id}}
    )
    assert got.status_code == 200, got.text
    document = got.json()["output"]
    assert document["document_id"] == document_id
    assert document["text"] == _document(SUCCESS_WORD)["document"]["text"]

    assert await _memory_ids(http, SUCCESS_WORD) == [contribution_id]
    stored = await http.get(f"/domains/memory/contribution/{contribution_id}")
    assert stored.status_code == 200, stored.text
    contribution = stored.json()["contribution"]
    assert contribution["domain_id"] == "memory_domain"
    assert contribution["content"]["document_id"] == document_id
    assert SUCCESS_WORD in contribution["content"]["keywords"]
    assert not contribution.get("retracted", False)

    path = tmp_path / "proof.json"
    proof = await _save_proof(http, execution["execution_id"], path)
    assert [(r["step_id"], r["kind"], r["outcome"]) for r in proof["records"]] == [
        ("ingest", "execute", "succeeded"),
        ("analyze", "execute", "succeeded"),
        ("store", "execute", "succeeded"),
    ]
    verdict = _verdict(path)
    assert verdict.valid, verdict.reason
    code, out = await _verify_proof_cli(path, grace.data_dir)
    assert code == 0, out
    assert out.startswith(f"valid: execution {execution['execution_id']}"), out


async def test_a_failing_third_step_rolls_back_the_first_two_and_their_effects_are_gone(
    grace: RunningGrace, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    execution = await _run(http, FAILING_WORKFLOW, _document(ROLLBACK_WORD))

    assert execution["state"] == "EXECUTION_STATE_ROLLED_BACK", execution
    steps = _steps(execution)
    assert steps["analyze"]["state"] == "STEP_STATE_FAILED"
    assert steps["analyze"]["attempts"] == 1  # INVALID_ARGUMENT is not retried
    assert "input.text" in steps["analyze"]["error"]
    assert "analyze" in execution["error"]
    assert steps["ingest"]["state"] == steps["store"]["state"] == "STEP_STATE_COMPENSATED"
    assert not steps["ingest"].get("compensation_error")
    assert not steps["store"].get("compensation_error")
    # Reverse completion order: store completed after ingest, so it was undone first.
    assert _nanos(steps["ingest"]["finished_at"]) < _nanos(steps["store"]["finished_at"])
    assert execution["compensation_order"] == ["store", "ingest"]

    # Both effects happened: the steps returned the document and the contribution...
    document_id = steps["ingest"]["output"]["document_id"]
    contribution_id = steps["store"]["output"]["contribution_id"]
    # ... and are gone: the document is no longer stored,
    got = await http.post(
        "/domains/invoke/data_domain/get", json={"input": {"document_id": document_id}}
    )
    assert got.status_code == 404, got.text
    assert got.json()["error"]["status"] == "NOT_FOUND"
    # and no query finds the knowledge; the memory keeps it only as retracted.
    assert await _memory_ids(http, ROLLBACK_WORD) == []
    stored = await http.get(f"/domains/memory/contribution/{contribution_id}")
    assert stored.status_code == 200, stored.text
    contribution = stored.json()["contribution"]
    assert contribution["retracted"] is True
    assert execution["execution_id"] in contribution["retraction_reason"]

    path = tmp_path / "proof.json"
    proof = await _save_proof(http, execution["execution_id"], path)
    assert proof["final_state"] == "ROLLED_BACK"
    records = [(r["step_id"], r["kind"], r["outcome"]) for r in proof["records"]]
    assert records == [
        ("ingest", "execute", "succeeded"),
        ("store", "execute", "succeeded"),
        ("analyze", "execute", "failed"),
        ("store", "compensate", "succeeded"),
        ("ingest", "compensate", "succeeded"),
    ]
    # The proof binds what each compensation reported: the contribution retracted, the
    # document deleted (it existed until then).
    store_undo, ingest_undo = proof["records"][3], proof["records"][4]
    assert store_undo["output_sha256"] == digest(
        {"contribution_id": contribution_id, "retracted": True, "found": True}
    )
    assert ingest_undo["output_sha256"] == digest({"document_id": document_id, "deleted": True})
    verdict = _verdict(path)
    assert verdict.valid, verdict.reason
    code, out = await _verify_proof_cli(path, grace.data_dir)
    assert code == 0, out
    assert "(ROLLED_BACK), 5 records" in out, out


async def test_a_tampered_proof_fails_verification_naming_the_record(
    grace: RunningGrace, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    execution = await _run(http, DOCUMENT_WORKFLOW, _document("tamperwort"))
    assert execution["state"] == "EXECUTION_STATE_SUCCEEDED", execution
    genuine = tmp_path / "proof.json"
    proof = await _save_proof(http, execution["execution_id"], genuine)
    assert (await _verify_proof_cli(genuine, grace.data_dir))[0] == 0

    # Claim the analysis produced something else.
    proof["records"][1]["output_sha256"] = digest({"summary": "nothing to see"})
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps({"proof": proof}))

    verdict = _verdict(tampered)
    assert not verdict.valid
    assert verdict.first_invalid_record == 1
    code, out = await _verify_proof_cli(tampered, grace.data_dir)
    assert code == 1, out
    assert out.startswith("INVALID (record 1)"), out
