"""A Node.js client (@grpc/grpc-js + @grpc/proto-loader over protos/) against real servers.

The registry scenario runs against an in-process registry; the others against the package's
`grace up --with-examples`. Skipped cleanly where Node.js or npm is missing; CI has both.
The npm packages are installed on first use into tests/interop/node_modules, from
package-lock.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2

from services.common import codegen
from services.orchestrator.proof import load_proof, verify_proof
from tests.grace_up import RunningGrace
from tests.registry.conftest import RunningRegistry
from tests.support import credential_env, session_pki

HERE = Path(__file__).parent
NODE, NPM = shutil.which("node"), shutil.which("npm")
pytestmark = pytest.mark.skipif(NODE is None or NPM is None, reason="Node.js/npm not installed")


@pytest.fixture(scope="session")
async def node_client(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Installs the locked npm packages once and returns the env the client script needs."""
    if not (HERE / "node_modules" / "@grpc" / "grpc-js").exists():
        # `npm ci` installs exactly what package-lock.json records (versions and integrity
        # hashes), so a new release on the registry cannot change what the test runs.
        process = await asyncio.create_subprocess_exec(
            str(NPM),
            "ci",
            "--no-audit",
            "--no-fund",
            cwd=HERE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 300)
        if process.returncode != 0:
            pytest.fail(f"npm install failed:\n{output.decode()}")
    includes = tmp_path_factory.mktemp("proto-includes")
    codegen.copy_proto_deps(includes)
    descriptor_set = descriptor_pb2.FileDescriptorSet()
    health_pb2.DESCRIPTOR.CopyToProto(descriptor_set.file.add())
    health_file = includes / "health.desc"
    health_file.write_bytes(descriptor_set.SerializeToString())
    return {"GRACE_PROTO_INCLUDES": str(includes), "GRACE_HEALTH_DESCRIPTOR": str(health_file)}


async def run_node(scenario: str, env: Mapping[str, str]) -> list[dict[str, Any]]:
    """Runs one scenario of client.mjs and returns the JSON lines it printed."""
    process = await asyncio.create_subprocess_exec(
        str(NODE),
        str(HERE / "client.mjs"),
        scenario,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines() if line.strip()]


async def test_node_registers_finds_and_sees_errors(
    node_client: dict[str, str], registry_server: RunningRegistry
) -> None:
    pki = session_pki()
    steps = await run_node(
        "registry",
        {
            **node_client,
            "GRACE_REGISTRY_ADDR": registry_server.address,
            **credential_env(pki.client(token=pki.admin_token)),
        },
    )
    by_step = {s["step"]: s for s in steps}
    assert by_step["register"] == {"step": "register", "created": True, "address": "127.0.0.1:9333"}
    assert by_step["find"]["domains"] == ["node_domain"]
    assert 0 < by_step["find"]["score"] <= 1
    assert by_step["not_found"]["code"] == "NOT_FOUND"
    assert by_step["not_found"]["details"] == "domain 'missing_domain' not found"


def by_step(steps: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The scenario's lines keyed by step name (each step is printed once)."""
    keyed = {s["step"]: s for s in steps}
    assert len(keyed) == len(steps), steps
    return keyed


@pytest.mark.slow
async def test_node_publishes_an_event_and_receives_it_on_a_stream_opened_before(
    node_client: dict[str, str], grace_platform: RunningGrace
) -> None:
    steps = by_step(await run_node("events", {**node_client, **grace_platform.env()}))
    assert steps["create_subscription"]["created"] is True
    assert steps["create_subscription"]["subscription_id"] == "node-interop"
    assert steps["create_subscription"]["patterns"] == ["ml.prediction"]
    assert "node-interop" in steps["list_subscriptions"]["subscription_ids"]
    published, received = steps["publish"], steps["received"]
    assert received == {
        "step": "received",
        "id": published["id"],
        "sequence": published["sequence"],
        "event_type": "ml.prediction",
        "source_domain": "my_app",
        "data": {"prediction": "positive"},
    }
    assert steps["retry"] == {"step": "retry", "duplicate": True, "sequence": published["sequence"]}
    assert int(steps["delivered"]["delivered_sequence"]) >= int(published["sequence"])
    assert int(steps["delivered"]["delivered_count"]) >= 1


@pytest.mark.slow
async def test_node_runs_the_seed_workflow_and_gets_a_proof_python_verifies(
    node_client: dict[str, str], grace_platform: RunningGrace
) -> None:
    steps = by_step(await run_node("workflow", {**node_client, **grace_platform.env()}))
    assert steps["choose"] == {
        "step": "choose",
        "analyzer": "ai_domain",
        "searcher": "memory_domain",
        "statuses": ["DOMAIN_STATUS_HEALTHY", "DOMAIN_STATUS_HEALTHY"],
    }
    created = steps["create"]
    assert created["workflow_id"].startswith("wf_")
    assert created["domains_checked"] is True
    assert created["steps"] == [
        {"id": "step_1", "domain_id": "memory_domain", "depends_on": []},
        {"id": "step_2", "domain_id": "ai_domain", "depends_on": ["step_1"]},
    ]
    assert steps["execute"]["state"] == "EXECUTION_STATE_SUCCEEDED"
    assert steps["execute"]["steps"] == [
        ["step_1", "STEP_STATE_SUCCEEDED"],
        ["step_2", "STEP_STATE_SUCCEEDED"],
    ]
    final = steps["final"]
    assert final["state"] == "EXECUTION_STATE_SUCCEEDED"
    assert final["output"]["step_1"]["query"] == "domain"
    # The analysis ran on the workflow input, handed on by the step before it.
    assert final["output"]["step_2"]["summary"] == (
        "def heal(domain): restart the failed domain quickly and safely"
    )
    assert {"word": "heal", "count": 1} in final["output"]["step_2"]["keywords"]

    # The proof as Node received it, checked offline by the Python verifier.
    proof = load_proof(json.dumps(steps["proof"]["proof"]))
    assert proof.execution_id == steps["execute"]["execution_id"]
    assert proof.final_state == "SUCCEEDED"
    assert [(r.step_id, r.domain_id, r.outcome) for r in proof.records] == [
        ("step_1", "memory_domain", "succeeded"),
        ("step_2", "ai_domain", "succeeded"),
    ]
    assert verify_proof(proof).valid
    assert steps["verify"] == {"step": "verify", "valid": True, "reason": ""}


@pytest.mark.slow
async def test_node_reads_the_health_of_every_component(
    node_client: dict[str, str], grace_platform: RunningGrace
) -> None:
    grpc_names = [c.name for c in grace_platform.grpc_components()] + ["guardian"]
    http_names = [c.name for c in grace_platform.components if c.health_http_path]
    steps = await run_node(
        "health",
        {
            **node_client,
            **grace_platform.env(),
            "GRACE_INTEROP_COMPONENTS": ",".join(grpc_names),
            "GRACE_INTEROP_HTTP_COMPONENTS": ",".join(http_names),
        },
    )
    assert http_names == ["gateway"]
    assert {s["component"]: s["status"] for s in steps} == {
        name: "SERVING" for name in [*grpc_names, *http_names]
    }
