"""Health probes over grpc.health.v1.

A `HealthProbe` follows one component two ways at once: a `Watch` stream reports every
status change the moment it happens, and a `Check` with a deadline every interval measures
latency and catches a server that hangs without closing its connections (Watch alone would
stay silent). A server without Watch (UNIMPLEMENTED) is probed by Check alone, and a component that
serves HTTP instead of gRPC health (`health_http_path`) by an HTTP GET on the same interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2

from services.common import channels
from services.common.channels import channel
from services.common.pki import SERVER_NAME
from services.guardian.settings import ProbeSettings

log = logging.getLogger(__name__)

UNREACHABLE = "UNREACHABLE"


@dataclass(frozen=True)
class Observation:
    """One thing a probe saw.

    Attributes:
        status: "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN", "UNKNOWN" or "UNREACHABLE".
        from_check: True for a Check (a probe that counts toward failures), False for a
            Watch update.
        latency_ms: Round trip of a Check; 0 for Watch updates.
        error: Why the probe failed, when it did.
        at: Epoch seconds.
    """

    status: str
    from_check: bool
    latency_ms: float = 0.0
    error: str = ""
    at: float = 0.0

    @property
    def serving(self) -> bool:
        """True for SERVING."""
        return self.status == "SERVING"


def _status_name(value: int) -> str:
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(value))


class HealthClient:
    """Typed grpc.health.v1 client calls on a channel (the stock stub has no annotations)."""

    def __init__(self, chan: grpc.aio.Channel) -> None:
        self.check: grpc.aio.UnaryUnaryMultiCallable[
            health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
        ] = chan.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        self.watch: grpc.aio.UnaryStreamMultiCallable[
            health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
        ] = chan.unary_stream(
            "/grpc.health.v1.Health/Watch",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )


async def check_once(stub: HealthClient, service: str, timeout_s: float) -> Observation:
    """One Check with a deadline."""
    started = time.perf_counter()
    try:
        response = await stub.check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
        )
    except grpc.aio.AioRpcError as exc:
        latency = (time.perf_counter() - started) * 1000
        status = "SERVICE_UNKNOWN" if exc.code() == grpc.StatusCode.NOT_FOUND else UNREACHABLE
        return Observation(
            status, True, latency, f"{exc.code().name}: {exc.details()}", at=time.time()
        )
    latency = (time.perf_counter() - started) * 1000
    return Observation(_status_name(response.status), True, latency, at=time.time())


async def http_check(address: str, path: str, timeout_s: float) -> Observation:
    """One `GET path` over HTTP/1.0: 2xx is SERVING, any other status NOT_SERVING.

    For components that serve HTTP rather than gRPC health (`health_http_path`). When this
    process's channels are secure, HTTPS verified against the Grace CA first (the gateway);
    a server that does not speak TLS at all (a third-party `command` component) is then
    asked over plain HTTP, since a health status is no secret.
    """
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    security = channels.configured()
    context = None
    if security is not None:
        context = ssl.create_default_context(cafile=str(security.ca_file))
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            try:
                status_line = await _status_line(host, int(port), address, path, context)
            except ssl.SSLError as exc:
                if context is None or "WRONG_VERSION_NUMBER" not in str(exc):
                    raise
                status_line = await _status_line(host, int(port), address, path, None)
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        latency = (time.perf_counter() - started) * 1000
        reason = str(exc) or type(exc).__name__
        return Observation(UNREACHABLE, True, latency, f"HTTP: {reason}", at=time.time())
    latency = (time.perf_counter() - started) * 1000
    parts = status_line.split()
    code = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0
    if 200 <= code < 300:
        return Observation("SERVING", True, latency, at=time.time())
    return Observation("NOT_SERVING", True, latency, f"HTTP status {code}", at=time.time())


async def _status_line(
    host: str, port: int, address: str, path: str, context: ssl.SSLContext | None
) -> bytes:
    reader, writer = await asyncio.open_connection(
        host, port, ssl=context, server_hostname=SERVER_NAME if context is not None else None
    )
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n".encode())
        await writer.drain()
        return await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def probe_address(
    address: str, service: str, timeout_s: float, http_path: str = ""
) -> Observation:
    """One probe of `address` (for diagnoses and on-demand checks): a gRPC health Check on
    a fresh channel, or an HTTP GET of `http_path` when given."""
    if http_path:
        return await http_check(address, http_path, timeout_s)
    async with channel(address) as chan:
        return await check_once(HealthClient(chan), service, timeout_s)


class HealthProbe:
    """Follows the health of one server until cancelled.

    Args:
        address: `host:port` of the server.
        service: Health service name ("" for the whole server).
        settings: Interval, timeout and whether to Watch.
        on_observation: Called with every observation, on the event loop.
        is_starting: Tells whether the component is still starting (Checks then run every
            `startup_poll_s` instead of every `interval_s`).
        http_path: Probe `GET http_path` over HTTP instead of gRPC health (no Watch).
    """

    def __init__(
        self,
        address: str,
        service: str,
        settings: ProbeSettings,
        on_observation: Callable[[Observation], None],
        is_starting: Callable[[], bool],
        http_path: str = "",
    ) -> None:
        self.address = address
        self.service = service
        self.settings = settings
        self.http_path = http_path
        self._emit = on_observation
        self._is_starting = is_starting

    async def run(self) -> None:
        """Probes until cancelled."""
        if self.http_path:
            path = self.http_path
            await self._check_loop(lambda: http_check(self.address, path, self.settings.timeout_s))
            return
        # The component is usually still starting when its probe begins: dial again quickly.
        async with channel(self.address, fast_reconnect=True) as chan:
            stub = HealthClient(chan)

            def grpc_check() -> Awaitable[Observation]:
                return check_once(stub, self.service, self.settings.timeout_s)

            tasks = [
                asyncio.create_task(self._check_loop(grpc_check), name=f"check {self.address}")
            ]
            if self.settings.watch:
                tasks.append(
                    asyncio.create_task(self._watch_loop(stub), name=f"watch {self.address}")
                )
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _check_loop(self, check: Callable[[], Awaitable[Observation]]) -> None:
        while True:
            starting = self._is_starting()
            observation = await check()
            # While starting, a server that is not listening yet is expected: only a
            # SERVING answer matters then, and the start-up timeout bounds the wait.
            if not starting or observation.serving:
                self._emit(observation)
            pause = self.settings.startup_poll_s if starting else self.settings.interval_s
            await asyncio.sleep(pause)

    async def _watch_loop(self, stub: HealthClient) -> None:
        while True:
            call = stub.watch(health_pb2.HealthCheckRequest(service=self.service))
            try:
                async for response in call:
                    self._emit(Observation(_status_name(response.status), False, at=time.time()))
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    log.info("%s has no health Watch: probing by Check only", self.address)
                    return
                # The server is not up yet, or went away: the Check loop reports it.
            finally:
                call.cancel()
            await asyncio.sleep(self.settings.startup_poll_s)
