"""`python -m services.guardian.healthcheck`: the container health check command."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

from services.common.config import ServerConfig
from services.common.server import Service
from tests.support import free_port, serving


class _Nothing(Service):
    """A component that serves only health."""

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        return []


async def _healthcheck(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.guardian.healthcheck",
        *args,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_a_serving_component_passes_and_an_unreachable_one_fails(tmp_path: Path) -> None:
    config = ServerConfig(service="domain-d", host="127.0.0.1", port=0, data_dir=tmp_path)
    async with serving(config, _Nothing()) as (server, _):
        status, out = await _healthcheck(server.address)
        assert (status, out.split()[0]) == (0, "SERVING")
        status, out = await _healthcheck(server.address, "--service", "no.such.Service")
        assert (status, out.split()[0]) == (1, "SERVICE_UNKNOWN")
    status, out = await _healthcheck(f"127.0.0.1:{free_port()}", "--timeout", "1")
    assert status == 1
    assert out.startswith("UNREACHABLE")
