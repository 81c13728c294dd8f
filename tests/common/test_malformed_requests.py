"""Requests that are not valid protobuf are INVALID_ARGUMENT on every Grace server, not the
bare UNKNOWN grpcio answers when a request deserializer raises."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_status import rpc_status

from grace.eventbus.v1 import eventbus_pb2
from services.common.channels import channel
from services.common.server import GraceServer
from services.eventbus.server import EventBusServer
from tests.common.test_server import SlowStartService
from tests.eventbus.conftest import (  # noqa: F401  # fixtures, used below
    bus_server,
    jetstream_options,
    log_backend,
)
from tests.support import server_config

# GetDomainRequest and WatchDomainsRequest: field 1 is the string domain_id / a varint.
BAD_UTF8 = b"\x0a\x02\xff\xfe"
CORRUPT = b"\x0a\xff\xff\xff\xff\x0f"
TAG_ZERO = b"\x00\x01"


def deeply_nested_struct(levels: int) -> struct_pb2.Struct:
    root = struct_pb2.Struct()
    current = root
    for _ in range(levels):
        current = current.fields["a"].struct_value
    current.fields["leaf"].number_value = 1
    return root


def assert_malformed(error: grpc.aio.AioRpcError, fragment: str) -> None:
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error
    assert fragment in (error.details() or ""), error.details()
    status = rpc_status.from_call(error)
    assert status is not None
    assert "MALFORMED_REQUEST" in str(status.details[0].value)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [(BAD_UTF8, "UTF-8"), (CORRUPT, "corrupt"), (TAG_ZERO, "corrupt")],
)
async def test_a_unary_request_that_is_not_protobuf_is_invalid_argument(
    tmp_path: Path, payload: bytes, fragment: str
) -> None:
    service = SlowStartService()
    service.release.set()
    async with (
        GraceServer(server_config("test", tmp_path), service) as server,
        channel(server.address) as chan,
    ):
        raw = chan.unary_unary("/grace.registry.v1.RegistryService/GetDomain")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await raw(payload, timeout=10)
    assert_malformed(raised.value, fragment)


async def test_a_streaming_request_that_is_not_protobuf_is_invalid_argument(
    tmp_path: Path,
) -> None:
    service = SlowStartService()
    service.release.set()
    async with (
        GraceServer(server_config("test", tmp_path), service) as server,
        channel(server.address) as chan,
    ):
        raw = chan.unary_stream("/grace.registry.v1.RegistryService/WatchDomains")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in raw(CORRUPT, timeout=10):
                pass
    assert_malformed(raised.value, "corrupt")


async def test_a_struct_nested_past_protobufs_limit_is_invalid_argument(
    bus_server: tuple[EventBusServer, grpc.aio.Channel],  # noqa: F811  # the fixture
) -> None:
    request = eventbus_pb2.PublishRequest(event_type="t.x", source_domain="d")
    request.data.CopyFrom(deeply_nested_struct(60))  # 3 protobuf levels per Struct level
    raw = bus_server[1].unary_unary("/grace.eventbus.v1.EventBusService/Publish")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await raw(request.SerializeToString(), timeout=10)
    assert_malformed(raised.value, "MaxDepth")


async def test_a_valid_request_still_reaches_the_handler(tmp_path: Path) -> None:
    service = SlowStartService()
    service.release.set()
    async with (
        GraceServer(server_config("test", tmp_path), service) as server,
        channel(server.address) as chan,
    ):
        raw = chan.unary_unary("/grace.registry.v1.RegistryService/GetDomain")
        assert await raw(b"\x0a\x01x", timeout=10) == b""


async def call_once(chan: grpc.aio.Channel, method: str, streaming: bool) -> None:
    if streaming:
        async for _ in chan.unary_stream(method)(BAD_UTF8, timeout=10):
            pass
    else:
        await chan.unary_unary(method)(BAD_UTF8, timeout=10)


@pytest.mark.parametrize(
    ("method", "streaming"),
    [("/grpc.health.v1.Health/Check", False), ("/grpc.health.v1.Health/Watch", True)],
)
async def test_a_health_request_that_is_not_protobuf_is_invalid_argument(
    tmp_path: Path, method: str, streaming: bool
) -> None:
    service = SlowStartService()
    service.release.set()
    async with (
        GraceServer(server_config("test", tmp_path), service) as server,
        channel(server.address) as chan,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call_once(chan, method, streaming)
        # A well-formed health request still gets its answer.
        assert await chan.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=10)
    assert_malformed(raised.value, "UTF-8")
