"""Fuzzing the REST surface from its own OpenAPI document (schemathesis).

Schemathesis runs as a subprocess (its CLI), so its blocking HTTP client does not stall the
event loop that serves the gateway and the registry in this process. Operations whose
upstream does not run here (every service but the registry) would rightly answer 503, so
the run is limited to the registry's operations and the gateway's own; the endless watch
stream is left out. Afterwards the registry must still be SERVING.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import pytest

from tests.gateway.conftest import Stack


def _schemathesis() -> str | None:
    candidate = Path(sys.executable).with_name("schemathesis")
    return str(candidate) if candidate.exists() else shutil.which("schemathesis")


@pytest.mark.slow
async def test_fuzzing_the_registry_routes_finds_no_server_error(
    stack: Stack, tmp_path: Path
) -> None:
    command = _schemathesis()
    if command is None:
        pytest.skip("schemathesis is not installed")
    process = await asyncio.create_subprocess_exec(
        command,
        "run",
        f"{stack.gateway.url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--include-tag",
        "grace.registry.v1.RegistryService",
        "--exclude-path",
        "/domains/watch",
        "--max-examples",
        "25",
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--seed",
        "20261121",
        "--no-color",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,  # schemathesis keeps a cache directory in its working directory
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=300)
    report = out.decode(errors="replace")
    assert process.returncode == 0, report[-4000:]
    assert "RegisterDomain" in report or "/domains/register" in report, report[-4000:]
    health = await stack.http.get("/domains/system/health")
    assert health.json()["services"]["registry"]["status"] == "SERVING"
    stats = await stack.http.get("/domains/registry-stats")
    assert stats.status_code == 200
