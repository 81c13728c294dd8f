"""The registry as a user meets it: the real grpcurl binary, through reflection."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

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
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]

    described = await grpcurl(target, "describe", "grace.registry.v1.RegistryService")
    assert "rpc FindByCapability" in described
    # The proto comments come along: the API documentation is one `describe` away.
    assert "// Registers a domain" in described
    message = await grpcurl(target, "describe", "grace.registry.v1.Domain")
    assert "// Unique id" in message

    seed = '{"domain_id": "ai_domain", "port": 8202, "capabilities": ["chat", "ml", "prediction"]}'
    reply = json.loads(
        await grpcurl("-d", seed, target, "grace.registry.v1.RegistryService/RegisterDomain")
    )
    assert reply["created"] is True
    assert reply["domain"]["address"] == "127.0.0.1:8202"

    health = json.loads(await grpcurl(target, "grpc.health.v1.Health/Check"))
    assert health == {"status": "SERVING"}


async def test_reflection_v1_answers_like_v1alpha_with_comments(
    registry_server: RunningRegistry,
) -> None:
    call = registry_server.channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="grace.registry.v1.RegistryService"
        ),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="grpc.reflection.v1.ServerReflection"
        ),
    ]
    listed, registry_file, v1_file = [answer async for answer in call(iter(requests))]
    names = {s.name for s in listed.list_services_response.service}
    assert {"grpc.reflection.v1.ServerReflection", "grace.registry.v1.RegistryService"} <= names
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in registry_file.file_descriptor_response.file_descriptor_proto
    ]
    registry = next(f for f in files if f.name == "grace/registry/v1/registry.proto")
    comments = [loc.leading_comments for loc in registry.source_code_info.location]
    assert any("Registers a domain" in c for c in comments)
    (v1,) = v1_file.file_descriptor_response.file_descriptor_proto
    assert descriptor_pb2.FileDescriptorProto.FromString(v1).package == "grpc.reflection.v1"
