"""Health probes: Watch for instant changes, Check on an interval, Check alone without Watch."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.server import server_credentials
from services.guardian.probe import HealthProbe, Observation, http_check, probe_address
from services.guardian.settings import ProbeSettings
from tests.support import eventually, free_ports, session_pki


class CheckOnlyHealth(health.aio.HealthServicer):
    """A health service without Watch, like some non-Python servers."""

    async def Watch(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no watch here")


@contextlib.asynccontextmanager
async def health_server(servicer: health.aio.HealthServicer) -> AsyncIterator[str]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(session_pki().security()))
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def _observe(address: str, settings: ProbeSettings, until: int) -> list[Observation]:
    seen: list[Observation] = []
    probe = HealthProbe(address, "", settings, seen.append, lambda: False)
    task = asyncio.create_task(probe.run())
    try:
        await eventually(lambda: len(seen) >= until, within_s=10, what=f"{until} observations")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return seen


async def test_watch_reports_a_change_before_the_next_check() -> None:
    servicer = health.aio.HealthServicer()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    async with health_server(servicer) as address:
        seen: list[Observation] = []
        settings = ProbeSettings(interval_s=60, timeout_s=1, startup_poll_s=0.05)
        probe = HealthProbe(address, "", settings, seen.append, lambda: False)
        task = asyncio.create_task(probe.run())
        try:
            await eventually(lambda: any(not o.from_check for o in seen), what="a Watch update")
            await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
            set_at = asyncio.get_running_loop().time()
            await eventually(
                lambda: any(o.status == "NOT_SERVING" and not o.from_check for o in seen),
                what="NOT_SERVING from Watch",
            )
            took = asyncio.get_running_loop().time() - set_at
            assert took < 5  # far less than the 60 s Check interval
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_a_server_without_watch_is_probed_by_check_alone() -> None:
    servicer = CheckOnlyHealth()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    async with health_server(servicer) as address:
        settings = ProbeSettings(interval_s=0.05, timeout_s=1)
        seen = await _observe(address, settings, until=3)
        assert all(o.from_check and o.serving for o in seen)
        assert all(o.latency_ms > 0 for o in seen)


async def test_checks_against_nothing_report_unreachable_with_the_reason() -> None:
    (port,) = free_ports(1)
    settings = ProbeSettings(interval_s=0.05, timeout_s=0.5, watch=False)
    seen = await _observe(f"127.0.0.1:{port}", settings, until=2)
    assert {o.status for o in seen} == {"UNREACHABLE"}
    assert seen[0].error.startswith(("UNAVAILABLE", "DEADLINE_EXCEEDED"))


@pytest.mark.parametrize(
    ("service", "status"), [("", "SERVING"), ("grace.nothing.v1.Nope", "SERVICE_UNKNOWN")]
)
async def test_a_single_check_names_the_status(service: str, status: str) -> None:
    servicer = health.aio.HealthServicer()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    async with health_server(servicer) as address:
        observation = await probe_address(address, service, 1.0)
        assert observation.status == status


@contextlib.asynccontextmanager
async def http_server(status_line: bytes) -> AsyncIterator[str]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(status_line + b"\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki = session_pki()
    tls.load_cert_chain(pki.component.cert, pki.component.key)
    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("status_line", "status", "error"),
    [
        (b"HTTP/1.1 200 OK", "SERVING", ""),
        (b"HTTP/1.1 204 No Content", "SERVING", ""),
        (b"HTTP/1.1 503 Service Unavailable", "NOT_SERVING", "HTTP status 503"),
    ],
)
async def test_http_probes_count_2xx_as_serving(
    status_line: bytes, status: str, error: str
) -> None:
    async with http_server(status_line) as address:
        observation = await http_check(address, "/health", 1.0)
    assert (observation.status, observation.error) == (status, error)
    assert observation.from_check


async def test_an_http_probe_of_nothing_is_unreachable() -> None:
    (port,) = free_ports(1)
    observation = await probe_address(f"127.0.0.1:{port}", "", 1.0, http_path="/health")
    assert observation.status == "UNREACHABLE"
    assert observation.error.startswith("HTTP: ")
