"""The shared server runtime: health, readiness, error translation, graceful shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.channels import channel
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.server import GraceServer, Service
from tests.support import free_port, server_config

SERVICE = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name


class ScriptedRegistry(registry_pb2_grpc.RegistryServiceServicer):
    """Answers GetDomain by raising whatever the test asks for."""

    def __init__(self) -> None:
        self.raise_next: BaseException | None = None

    async def GetDomain(self, request: Any, context: Any) -> registry_pb2.GetDomainResponse:
        if self.raise_next is not None:
            raise self.raise_next
        return registry_pb2.GetDomainResponse()

    async def WatchDomains(self, request: Any, context: Any) -> Any:
        yield registry_pb2.WatchDomainsResponse(revision=1)
        if self.raise_next is not None:
            raise self.raise_next


class SlowStartService(Service):
    """A service whose storage takes a while to open, and that records its lifecycle."""

    def __init__(self) -> None:
        self.servicer = ScriptedRegistry()
        self.release = asyncio.Event()
        self.events: list[str] = []

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(self.servicer, server)
        return [SERVICE]

    async def start(self) -> None:
        await self.release.wait()
        self.events.append("started")

    async def begin_shutdown(self) -> None:
        self.events.append("begin_shutdown")

    async def stop(self) -> None:
        self.events.append("stopped")


async def test_health_is_not_serving_until_start_returns_then_calls_are_admitted(
    tmp_path: Path,
) -> None:
    service = SlowStartService()
    server = GraceServer(server_config("test", tmp_path), service)
    starting = asyncio.create_task(server.start())
    try:
        for _ in range(200):
            if server.port:
                break
            await asyncio.sleep(0.01)
        async with channel(server.address) as chan:
            health = health_pb2_grpc.HealthStub(chan)
            stub = registry_pb2_grpc.RegistryServiceStub(chan)
            for _ in range(200):
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE))
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.01)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.GetDomain(registry_pb2.GetDomainRequest())
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE

            service.release.set()
            await starting
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            await stub.GetDomain(registry_pb2.GetDomainRequest())
    finally:
        service.release.set()
        await server.stop(grace=0.1)
    assert service.events == ["started", "begin_shutdown", "stopped"]


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        (
            InvalidArgument("domain_id", "is required"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
        ),
        (NotFound("domain", "x"), grpc.StatusCode.NOT_FOUND, "DOMAIN_NOT_FOUND"),
        (FailedPrecondition("not now"), grpc.StatusCode.FAILED_PRECONDITION, "FAILED_PRECONDITION"),
    ],
)
async def test_grace_errors_become_their_status_with_error_info(
    tmp_path: Path, error: Exception, code: grpc.StatusCode, reason: str
) -> None:
    from google.rpc import error_details_pb2

    service = SlowStartService()
    service.release.set()
    async with GraceServer(server_config("test", tmp_path), service) as server:
        service.servicer.raise_next = error
        async with channel(server.address) as chan:
            stub = registry_pb2_grpc.RegistryServiceStub(chan)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.GetDomain(registry_pb2.GetDomainRequest())
            assert raised.value.code() == code
            status = rpc_status.from_call(raised.value)
            assert status is not None
            info = error_details_pb2.ErrorInfo()
            assert status.details[0].Unpack(info)
            assert info.reason == reason

            stream = stub.WatchDomains(registry_pb2.WatchDomainsRequest())
            assert (await stream.read()).revision == 1
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stream.read()
            assert raised.value.code() == code


async def test_an_unexpected_exception_is_internal_not_unknown(tmp_path: Path) -> None:
    service = SlowStartService()
    service.release.set()
    async with GraceServer(server_config("test", tmp_path), service) as server:
        service.servicer.raise_next = KeyError("boom")
        async with channel(server.address) as chan:
            stub = registry_pb2_grpc.RegistryServiceStub(chan)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.GetDomain(registry_pb2.GetDomainRequest())
            assert raised.value.code() == grpc.StatusCode.INTERNAL
            assert "boom" not in (raised.value.details() or "")


async def test_a_method_the_servicer_leaves_to_its_base_class_is_unimplemented(
    tmp_path: Path,
) -> None:
    # Clients (the bus's batched push delivery) fall back to another method on UNIMPLEMENTED:
    # a Grace server must answer it as every other gRPC server does, not INTERNAL.
    service = SlowStartService()
    service.release.set()
    async with (
        GraceServer(server_config("test", tmp_path), service) as server,
        channel(server.address) as chan,
    ):
        stub = registry_pb2_grpc.RegistryServiceStub(chan)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.ListDomains(registry_pb2.ListDomainsRequest())
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert "ListDomains" in (raised.value.details() or "")


async def test_a_second_server_cannot_silently_share_a_port(tmp_path: Path) -> None:
    first_service, second_service = SlowStartService(), SlowStartService()
    first_service.release.set()
    async with GraceServer(server_config("test", tmp_path), first_service) as first:
        config = server_config("test", tmp_path)
        taken = type(config)(**{**config.__dict__, "port": first.port})
        with pytest.raises(OSError, match="cannot bind"):
            await GraceServer(taken, second_service).start()


@pytest.mark.slow
async def test_sigterm_drains_and_exits_zero(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "GRACE_DATA_DIR": str(tmp_path), "GRACE_REGISTRY_PORT": str(port)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.registry",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with channel(f"127.0.0.1:{port}") as chan:
            health = health_pb2_grpc.HealthStub(chan)
            for _ in range(300):
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.05)
            else:
                pytest.fail("registry never became SERVING")
        process.send_signal(signal.SIGTERM)
        raw_output, _ = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    output = raw_output.decode()
    assert process.returncode == 0, output
    assert "registry stopped" in output
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_bad_configuration_fails_fast_with_the_variable_named(tmp_path: Path) -> None:
    env = {**os.environ, "GRACE_DATA_DIR": str(tmp_path), "GRACE_REGISTRY_PORT": "eighty"}
    result = subprocess.run(
        [sys.executable, "-m", "services.registry"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "GRACE_REGISTRY_PORT='eighty'" in result.stderr


async def test_health_watch_streams_status_changes(tmp_path: Path) -> None:
    service = SlowStartService()
    service.release.set()
    server = GraceServer(server_config("test", tmp_path), service)
    await server.start()
    stopping: asyncio.Task[None] | None = None
    try:
        async with channel(server.address) as chan:
            watch = health_pb2_grpc.HealthStub(chan).Watch(
                health_pb2.HealthCheckRequest(service=SERVICE)
            )
            first = await asyncio.wait_for(watch.read(), 5)
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            stopping = asyncio.create_task(server.stop(grace=0.5))
            second = await asyncio.wait_for(watch.read(), 5)
            assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
            await stopping
    finally:
        if stopping is None:
            await server.stop(grace=0)


class BackgroundService(Service):
    """Spawns a long-running task and a failing one; records what `stop` saw."""

    def __init__(self) -> None:
        self.forever_cancelled = False
        self.running_at_stop: list[str] = []

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(ScriptedRegistry(), server)
        return [SERVICE]

    async def _forever(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.forever_cancelled = True
            raise

    async def _fails(self) -> None:
        raise RuntimeError("the background work broke")

    async def start(self) -> None:
        self.spawn(self._forever(), "forever")
        self.spawn(self._fails(), "fails")

    async def stop(self) -> None:
        self.running_at_stop = [
            t.get_name() for t in asyncio.all_tasks() if t.get_name() in ("forever", "fails")
        ]


async def test_spawned_tasks_end_before_stop_and_a_failed_one_is_logged_when_it_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = BackgroundService()
    server = GraceServer(server_config("background", tmp_path), service)
    await server.start()
    for _ in range(100):
        if "background task fails failed" in caplog.text:
            break
        await asyncio.sleep(0.01)
    assert "background task fails failed" in caplog.text
    assert "the background work broke" in caplog.text

    await server.stop(grace=0.1)

    assert service.forever_cancelled
    assert service.running_at_stop == []
