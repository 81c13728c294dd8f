"""Builds the gateway from the descriptors and runs it on uvicorn.

Use `Gateway` as an async context manager in tests (it binds its own socket, so port 0
works and `gateway.port` tells the port), or `serve_forever` from `__main__`: SIGTERM or
SIGINT reports NOT_SERVING on /healthz, ends open streams, stops accepting, lets in-flight
requests finish for the grace period, then closes the upstream channels. A second signal
cuts the grace period short.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import ssl
from collections.abc import Generator, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn
from google.protobuf import descriptor as _descriptor
from starlette.middleware.cors import CORSMiddleware
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # preloaded by a fork server

from gateway.app import ForwardGate, GatewayApp
from gateway.comments import load_comments
from gateway.config import GatewayConfig
from gateway.console import console
from gateway.explorer import ASGIApp, Explorer
from gateway.governance import governance_gate
from gateway.openapi import ERROR_SCHEMA, build_openapi
from gateway.routes import RouteTable, discover_services
from gateway.upstreams import Upstreams
from services.common import channels, telemetry
from services.common.auth import Authenticator
from services.common.call_metrics import ImmuneReporter
from services.common.channels import ClientSecurity
from services.common.config import SecurityConfig
from services.common.tokens import TokenValidator
from services.common.upkeep import ProcessUpkeep

log = logging.getLogger(__name__)

# The gateway's call metrics are named apart from the ones domains report themselves
# (`latency_ms` measured inside the domain), so each series has one source.
GATEWAY_METRIC_PREFIX = "gateway_"

_BUILTIN_DOCS: dict[str, tuple[str, str]] = {
    "/healthz": ("healthz", "Health of the gateway process itself."),
    "/openapi.json": ("openApi", "This document."),
    "/domains/system/health": (
        "systemHealth",
        "gRPC health of every upstream service; 200 when all are SERVING, 503 otherwise.",
    ),
    "/health": (
        "Gateway.Health",
        "The same as /domains/system/health (seed 003: the main API's health covers everything).",
    ),
    "/domains/system/overview": (
        "systemOverview",
        "Each service's health and stats RPCs (Get...Stats) and the guardian's component "
        "table; a service that is down shows as down.",
    ),
}


def builtin_openapi_paths() -> dict[str, dict[str, Any]]:
    """OpenAPI entries of the routes the gateway serves itself."""
    paths: dict[str, dict[str, Any]] = {}
    for path, (operation_id, description) in _BUILTIN_DOCS.items():
        paths[path] = {
            "get": {
                "operationId": operation_id,
                "tags": ["gateway"],
                "description": description,
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "503": {
                        "description": "Not every service is SERVING.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "default": {
                        "description": "An error.",
                        "content": {"application/json": {"schema": ERROR_SCHEMA}},
                    },
                },
            }
        }
    return paths


def build_app(
    config: GatewayConfig,
    services: Sequence[_descriptor.ServiceDescriptor] | None = None,
    *,
    proto_roots: Iterable[Path] | None = None,
    gate: ForwardGate | None = None,
) -> GatewayApp:
    """The application: routes, upstreams and OpenAPI document.

    Args:
        config: Gateway settings.
        services: Services to serve; default every generated Grace service.
        proto_roots: Where to read proto comments; default `config.proto_root`.
        gate: Asked before forwarding mutating requests; default: governance, unless
            `GRACE_GATEWAY_GOVERNANCE=off` (see `gateway.governance`).
    """
    services = discover_services() if services is None else services
    reserved = [("GET", path) for path in GatewayApp.builtin_paths()]
    table = RouteTable.from_services(services, reserved=reserved)
    roots = list(proto_roots) if proto_roots is not None else []
    if proto_roots is None and config.proto_root is not None:
        roots = [config.proto_root]

    def openapi() -> dict[str, Any]:
        comments = load_comments(roots) if roots else {}
        if not comments:
            log.warning(
                "no proto comments found (proto roots: %s): /openapi.json has no "
                "descriptions; set GRACE_GATEWAY_PROTO_ROOT to the directory of Grace's "
                ".proto files",
                ", ".join(map(str, roots)) or "none",
            )
        return build_openapi(table, comments, builtin_openapi_paths())

    upstreams = Upstreams(config.env, max_message_bytes=config.max_message_bytes)
    log.info("gateway: %d routes over %d services", len(table), len(table.services()))
    if gate is None:
        gate = governance_gate(config.env)
    authenticator = None
    if config.security is not None:
        security = config.security
        authenticator = Authenticator(
            TokenValidator(security.tokens_file, refresh_s=security.token_refresh_s)
        )
    return GatewayApp(config, table, upstreams, openapi, gate, authenticator)


# What a browser page may send and read across origins.
CORS_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
CORS_REQUEST_HEADERS = (
    "authorization",
    "content-type",
    "grpc-timeout",
    "last-event-id",
    "traceparent",
    "tracestate",
    "x-actor",
    "x-request-id",
    "x-request-timeout",
)
CORS_RESPONSE_HEADERS = ("x-request-id", "allow", "retry-after")
CORS_MAX_AGE_S = 600


def browser_ready(app: GatewayApp, config: GatewayConfig) -> ASGIApp:
    """The application as served: the API explorer at /docs and the web console at /ui; with
    tracing on, a SERVER span per request from the OpenTelemetry ASGI instrumentation
    (continuing the caller's traceparent, with the standard HTTP attributes; /healthz is not
    traced); with configured origins, CORS (preflights answered by Starlette's middleware
    before they reach a route)."""
    asgi: ASGIApp = console(Explorer(app))
    if telemetry.enabled():
        asgi = _traced(asgi)
    if config.cors_origins:
        asgi = CORSMiddleware(
            asgi,
            allow_origins=list(config.cors_origins),
            allow_methods=list(CORS_METHODS),
            allow_headers=list(CORS_REQUEST_HEADERS),
            expose_headers=list(CORS_RESPONSE_HEADERS),
            max_age=CORS_MAX_AGE_S,
        )
    return asgi


def _traced(asgi: ASGIApp) -> ASGIApp:
    # The stable HTTP semantic conventions (http.request.method, url.path,
    # http.response.status_code, ...) unless the operator chose otherwise.
    os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    middleware: ASGIApp = OpenTelemetryMiddleware(
        asgi,
        # Liveness probes every few seconds would bury the requests users care about.
        excluded_urls="/healthz",
        tracer_provider=telemetry.current().provider,
        # One span per request, not one per ASGI message sent or received.
        exclude_spans=["receive", "send"],
    )
    return middleware


class _UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling: `Gateway` handles signals itself, and
    uvicorn's would re-raise them after the shutdown and end the process non-zero."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def _follow_renewals(
    uv_config: uvicorn.Config, security: SecurityConfig, every_s: float = 5.0
) -> None:
    """Loads a renewed certificate into the live TLS context: new handshakes use it."""

    def stamp() -> int:
        return security.cert_file.stat().st_mtime_ns

    seen = stamp()
    while True:
        await asyncio.sleep(every_s)
        try:
            now = stamp()
            if now != seen and uv_config.ssl is not None:
                uv_config.ssl.load_cert_chain(str(security.cert_file), str(security.key_file))
                seen = now
                log.info("gateway: loaded the renewed TLS certificate")
        except (OSError, ssl.SSLError):
            log.exception("gateway: cannot load the renewed TLS certificate; keeping the old one")


class Gateway:
    """The gateway on a uvicorn server.

    Args:
        config: Gateway settings.
        app: A prebuilt application (tests); default `build_app(config)`.
    """

    def __init__(self, config: GatewayConfig, app: GatewayApp | None = None) -> None:
        self.config = config
        if config.security is not None and channels.configured() is None:
            channels.configure(ClientSecurity.of_process(config.security))
        self.app = app or build_app(config)
        self.port = 0
        self._socket: socket.socket | None = None
        self._server: _UvicornServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.reporter = (
            ImmuneReporter(
                config.immune_addr,
                self.app.calls,
                interval_s=config.metrics_interval_s,
                prefix=GATEWAY_METRIC_PREFIX,
            )
            if config.immune_addr
            else None
        )
        self._reporting: asyncio.Task[None] | None = None
        self._renewal: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """The base URL, `https://host:port` (`http://` in insecure mode)."""
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        scheme = "http" if self.config.security is None else "https"
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> None:
        """Binds and starts serving; returns once requests are accepted."""
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        # proto must be IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted connections only
        # then, and without it Nagle's algorithm adds ~40 ms to every keep-alive response.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.config.host, self.config.port))
        except OSError as exc:
            sock.close()
            raise OSError(
                f"gateway: cannot bind {self.config.host}:{self.config.port} "
                f"(is the port in use?): {exc}"
            ) from exc
        sock.listen(2048)
        sock.setblocking(False)
        self._socket = sock
        self.port = sock.getsockname()[1]
        uv_config = uvicorn.Config(
            browser_ready(self.app, self.config),
            lifespan="off",
            http=HttpToolsProtocol,
            # No WebSocket routes: without this, uvicorn imports a WebSocket library at
            # every start (the largest part of the gateway's start-up imports).
            ws="none",
            loop="none",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=max(1, round(self.config.shutdown_grace_s)),
            timeout_keep_alive=30,
            server_header=False,
            # The client address must be the TCP peer: it becomes x-forwarded-for upstream.
            proxy_headers=False,
        )
        security = self.config.security
        if security is not None:
            uv_config.ssl_certfile = str(security.cert_file)
            uv_config.ssl_keyfile = str(security.key_file)
            uv_config.load()
            self._renewal = asyncio.create_task(
                _follow_renewals(uv_config, security), name="gateway-tls-renewal"
            )
        else:
            log.warning("gateway: INSECURE mode: plain HTTP, no authentication")
        self._server = _UvicornServer(uv_config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="gateway-http")
        while not self._server.started:
            if self._task.done():
                await self._task  # raises the start-up error
                raise RuntimeError("gateway: the HTTP server stopped during start-up")
            await asyncio.sleep(0.01)
        if self.reporter is not None:
            self._reporting = asyncio.create_task(self.reporter.run(), name="gateway-metrics")
        # What start-up made (modules, descriptors, the route table) lives as long as the
        # process: out of the collector's generations (as the gRPC servers do), a full
        # collection while serving scans only what serving made.
        gc.freeze()
        log.info("gateway serving on %s", self.url)

    async def stop(self) -> None:
        """NOT_SERVING, end streams, drain for the grace period, close the channels."""
        log.info("gateway shutting down (grace %.1fs)", self.config.shutdown_grace_s)
        self.app.begin_shutdown()
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
        for task in (self._reporting, self._renewal):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.reporter is not None:
            await self.reporter.close()
        await self.app.upstreams.close()
        log.info("gateway stopped")

    async def serve_forever(self) -> None:
        """Serves until SIGTERM or SIGINT (a second one forces the stop)."""
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()

        def on_signal() -> None:
            if stop_requested.is_set() and self._server is not None:
                log.warning("second signal: stopping the gateway now")
                self._server.force_exit = True
            stop_requested.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        upkeep = ProcessUpkeep(self.config.env, "gateway", stop_requested.set)
        upkeep.start()
        await self.start()
        await stop_requested.wait()
        upkeep.stop()
        await self.stop()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
