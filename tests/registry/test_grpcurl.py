"""The registry as a user meets it: the real grpcurl binary, through reflection."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.registry.conftest import RunningRegistry
from tests.support import session_pki

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")
pytestmark = pytest.mark.skipif(GRPCURL is None, reason="grpcurl is not installed")


async def grpcurl(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        str(GRPCURL),
        *session_pki().grpcurl_args(),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_list_describe_and_the_seed_registration(registry_server: RunningRegistry) -> None:
    target = registry_server.address

    listed = (await grpcurl(target, "list")).split()
    assert listed == [
        "grace.registry.v1.RegistryService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ]

    described = await grpcurl(target, "describe", "grace.registry.v1.RegistryService")
    assert "rpc FindByCapability" in described

    seed = '{"domain_id": "ai_domain", "port": 8202, "capabilities": ["chat", "ml", "prediction"]}'
    reply = json.loads(
        await grpcurl("-d", seed, target, "grace.registry.v1.RegistryService/RegisterDomain")
    )
    assert reply["created"] is True
    assert reply["domain"]["address"] == "127.0.0.1:8202"

    health = json.loads(await grpcurl(target, "grpc.health.v1.Health/Check"))
    assert health == {"status": "SERVING"}
