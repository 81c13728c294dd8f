"""A Node.js client (@grpc/grpc-js + @grpc/proto-loader over protos/) against real servers.

Skipped cleanly where Node.js or npm is missing; CI has both. The npm packages are
installed on first use into tests/interop/node_modules.
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
from tests.registry.conftest import RunningRegistry

HERE = Path(__file__).parent
NODE, NPM = shutil.which("node"), shutil.which("npm")
pytestmark = pytest.mark.skipif(NODE is None or NPM is None, reason="Node.js/npm not installed")


@pytest.fixture(scope="session")
async def node_client(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Installs the npm packages once and returns the env the client script needs."""
    if not (HERE / "node_modules" / "@grpc" / "grpc-js").exists():
        process = await asyncio.create_subprocess_exec(
            str(NPM),
            "install",
            "--no-audit",
            "--no-fund",
            "--no-package-lock",
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
    steps = await run_node(
        "registry", {**node_client, "GRACE_REGISTRY_ADDR": registry_server.address}
    )
    by_step = {s["step"]: s for s in steps}
    assert by_step["register"] == {"step": "register", "created": True, "address": "127.0.0.1:9333"}
    assert by_step["find"]["domains"] == ["node_domain"]
    assert 0 < by_step["find"]["score"] <= 1
    assert by_step["not_found"]["code"] == "NOT_FOUND"
    assert "missing_domain" in by_step["not_found"]["details"]


async def test_node_reads_health(
    node_client: dict[str, str], registry_server: RunningRegistry
) -> None:
    steps = await run_node(
        "health",
        {
            **node_client,
            "GRACE_REGISTRY_ADDR": registry_server.address,
            "GRACE_INTEROP_COMPONENTS": "registry",
        },
    )
    assert steps == [{"step": "health", "component": "registry", "status": "SERVING"}]
