"""Gateway fixtures: the test-only transcoding proto, a registry and a gateway in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import descriptor as _descriptor
from google.protobuf import descriptor_pb2, descriptor_pool

from gateway.config import GatewayConfig
from gateway.server import Gateway, build_app
from services.common.codegen import PROTO_ROOT
from services.registry.server import RegistryServer
from tests.registry.conftest import registry_config
from tests.support import serving

TEST_PROTO = Path(__file__).with_name("transcoding_test.proto")
TEST_SERVICE = "grace.gatewaytest.v1.LibraryService"


def compile_descriptor_set(proto_dir: Path, out: Path) -> descriptor_pb2.FileDescriptorSet:
    """Compiles every .proto in `proto_dir` into a descriptor set with imports."""
    import grpc_tools
    from grpc_tools import protoc

    from services.common.codegen import googleapis_include

    files = [p.name for p in sorted(proto_dir.glob("*.proto"))]
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"-I{googleapis_include()}",
            f"-I{Path(grpc_tools.__file__).parent / '_proto'}",
            "--include_imports",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *files,
        ]
    )
    assert status == 0, "protoc failed on the test proto"
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


@pytest.fixture(scope="session")
def test_proto_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("protos")
    (directory / TEST_PROTO.name).write_text(TEST_PROTO.read_text())
    return directory


@pytest.fixture(scope="session")
def library_service(
    test_proto_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> _descriptor.ServiceDescriptor:
    """The test service, compiled now and added to the default pool like generated code."""
    pool = descriptor_pool.Default()
    try:
        return pool.FindServiceByName(TEST_SERVICE)
    except KeyError:
        pass
    out = tmp_path_factory.mktemp("descriptors") / "set.pb"
    for file in compile_descriptor_set(test_proto_dir, out).file:
        try:
            pool.FindFileByName(file.name)
        except KeyError:
            pool.AddSerializedFile(file.SerializeToString())
    return pool.FindServiceByName(TEST_SERVICE)


@dataclass
class Stack:
    """A registry behind a gateway, with an HTTP client on the gateway."""

    registry: RegistryServer
    registry_address: str
    registry_channel: grpc.aio.Channel
    gateway: Gateway
    http: httpx.AsyncClient


def gateway_config(env: dict[str, str], **overrides: object) -> GatewayConfig:
    return GatewayConfig(
        host="127.0.0.1",
        port=0,
        shutdown_grace_s=1.0,
        proto_root=PROTO_ROOT,
        env=env,
        **overrides,  # type: ignore[arg-type]
    )


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """The real registry (SQLite) behind a real gateway on free ports."""
    service = RegistryServer(registry_config(tmp_path))
    async with serving(service.config.server, service) as (server, chan):
        config = gateway_config({"GRACE_REGISTRY_ADDR": server.address}, max_body_bytes=64 * 1024)
        async with (
            Gateway(config, build_app(config)) as gateway,
            httpx.AsyncClient(base_url=gateway.url, timeout=30) as http,
        ):
            yield Stack(service, server.address, chan, gateway, http)
