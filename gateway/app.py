"""The gateway as an ASGI application (served by uvicorn; requests parsed with Starlette).

One request: authenticate the bearer token (secure mode: 401 without a valid one, except
`/healthz`), match the route (404, 405 with `Allow`), read the body (413 over the limit),
build the gRPC request (400 naming the field), check the access table for the RPC the
route maps to (403), work out the deadline and the metadata (the caller's token is
forwarded so the upstream enforces too; `x-actor` is the authenticated principal, never a
header the caller chose), ask the forward gate (mutating requests only), resolve the
upstream, call it, answer JSON (or relay the stream). Every error has the body described
in `gateway.errors`.

Each forwarded unary call is tallied for its upstream (the component, or the domain for
DomainService routes): latency, and whether it failed on the upstream's side (an answer
mapped to 5xx: UNAVAILABLE, INTERNAL, DEADLINE_EXCEEDED, UNKNOWN, ...). The gateway's
`ImmuneReporter` sends the tallies to the immune kernel every few seconds. Streams are
not tallied: their length says nothing about the upstream's health.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import grpc
from google.protobuf.message import Message
from opentelemetry import propagate, trace
from starlette.requests import Request

from gateway.config import GatewayConfig
from gateway.errors import HttpError, bad_request, from_rpc_error
from gateway.routes import DOMAIN_ID_FIELD, Route, RouteTable
from gateway.streaming import ActiveStreams, relay, wants_sse
from gateway.system import SystemViews
from gateway.transcode import TranscodeError, build_request, dumps, render_response
from gateway.upstreams import Metadata, Upstream, Upstreams
from services.common import telemetry
from services.common.access import HOW_TO_AUTHENTICATE, Principal, rule_for
from services.common.auth import Authenticator, AuthError
from services.common.call_metrics import CallTallies

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# Headers passed on to the upstream as gRPC metadata (lower case).
FORWARDED_HEADERS = ("traceparent", "tracestate", "x-actor", "authorization")
REQUEST_ID = "x-request-id"
_GRPC_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")
MIN_TIMEOUT_S = 0.001
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_tracer = trace.get_tracer("gateway")


@dataclass(frozen=True)
class ForwardRequest:
    """What the forward gate sees of a request about to be forwarded.

    Attributes:
        route: The matched route (method, gRPC method, component).
        message: The built gRPC request.
        metadata: The metadata that will be sent (x-actor, authorization, ...).
        path: The HTTP path requested (governance asks about `METHOD:path`).
    """

    route: Route
    message: Message
    metadata: Metadata
    path: str = ""


class ForwardGate(Protocol):
    """The hook point for asking before a mutating request is forwarded.

    The gateway calls `check` for every route whose HTTP method is not GET, after the
    request is built and before it is sent. To refuse, raise `HttpError` (for example 403
    PERMISSION_DENIED with the policy's reasons). Governance (issue 9) plugs in here.
    """

    async def check(self, request: ForwardRequest) -> None:
        """Returns to let the request through; raises `HttpError` to refuse it."""


class AllowAll:
    """The default gate: forwards everything."""

    async def check(self, request: ForwardRequest) -> None:
        return None


def parse_timeout(headers: Any, default: float | None, maximum: float) -> float | None:
    """The call deadline in seconds: `grpc-timeout` (gRPC format, `5S`, `250m`), else
    `X-Request-Timeout` (seconds), else `default`; capped at `maximum`.

    Raises:
        HttpError: 400 for a malformed header.
    """
    grpc_timeout = headers.get("grpc-timeout")
    if grpc_timeout is not None:
        match = _GRPC_TIMEOUT.fullmatch(grpc_timeout.strip())
        if not match:
            raise bad_request("grpc-timeout", "expected digits and a unit (H, M, S, m, u, n)")
        seconds = int(match.group(1)) * _TIMEOUT_UNITS[match.group(2)]
    else:
        text = headers.get("x-request-timeout")
        if text is None:
            return default
        try:
            seconds = float(text)
        except ValueError:
            raise bad_request("X-Request-Timeout", "expected a number of seconds") from None
        if not seconds > 0 or seconds != seconds:
            raise bad_request("X-Request-Timeout", "must be a positive number of seconds")
    if seconds <= 0:
        raise bad_request("grpc-timeout", "must be positive")
    # gRPC treats a sub-millisecond deadline as none at all; a millisecond is the floor.
    return min(max(seconds, MIN_TIMEOUT_S), maximum)


class GatewayApp:
    """The ASGI application.

    Args:
        config: Gateway settings.
        table: The routes.
        upstreams: The channels.
        openapi: The OpenAPI document served at /openapi.json.
        gate: Asked before each mutating request is forwarded.
        authenticator: Validates bearer tokens; None serves everyone (insecure mode).
    """

    def __init__(
        self,
        config: GatewayConfig,
        table: RouteTable,
        upstreams: Upstreams,
        openapi: dict[str, Any],
        gate: ForwardGate | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        self.config = config
        self.authenticator = authenticator
        self.table = table
        self.upstreams = upstreams
        self.gate: ForwardGate = gate or AllowAll()
        self.streams = ActiveStreams()
        self.calls = CallTallies()
        self.system = SystemViews(table, upstreams, config.health_timeout_s)
        self._openapi = dumps(openapi)
        self._builtins: dict[str, Callable[[], Awaitable[tuple[int, bytes]]]] = {
            "/healthz": self._healthz,
            "/openapi.json": self._openapi_json,
            "/domains/system/health": self._system_health,
            "/domains/system/overview": self._system_overview,
        }

    @staticmethod
    def builtin_paths() -> list[str]:
        """The paths the gateway serves itself (GET only)."""
        return ["/healthz", "/openapi.json", "/domains/system/health", "/domains/system/overview"]

    def begin_shutdown(self) -> None:
        """Reports NOT_SERVING on /healthz and ends open streams."""
        self.streams.cancel_all()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        # Liveness probes are not traced: they would bury the requests users care about.
        if telemetry.enabled() and scope.get("path") != "/healthz":
            await self._traced(request, receive, send)
            return
        await self._serve(request, receive, send)

    async def _traced(self, request: Request, receive: Receive, send: Send) -> None:
        """Serves a request inside a SERVER span that continues the caller's `traceparent`:
        the upstream calls are its children (the client interceptor injects this span)."""
        parent = propagate.extract(request.headers)
        status = 0

        async def recording_send(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        with _tracer.start_as_current_span(
            request.method,
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": request.method, "url.path": request.url.path},
        ) as span:
            await self._serve(request, receive, recording_send)
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(trace.Status(trace.StatusCode.ERROR, f"HTTP {status}"))

    async def _serve(self, request: Request, receive: Receive, send: Send) -> None:
        scope = request.scope
        request_id = request.headers.get(REQUEST_ID) or uuid.uuid4().hex
        extra = [(b"x-request-id", request_id.encode("latin-1", "replace"))]
        try:
            await self._handle(request, request_id, receive, send, extra)
        except HttpError as exc:
            await _send(send, exc.http_status, dumps(exc.body()), extra, exc.headers)
        except Exception:
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            error = HttpError(500, "internal error in the gateway", status="INTERNAL")
            await _send(send, 500, dumps(error.body()), extra)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.upstreams.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _handle(
        self,
        request: Request,
        request_id: str,
        receive: Receive,
        send: Send,
        extra: list[tuple[bytes, bytes]],
    ) -> None:
        method = request.method
        raw_path = request.scope.get("raw_path")
        path = raw_path.decode("latin-1") if raw_path else quote(request.url.path)
        principal = self._authenticate(request, path)
        builtin = self._builtins.get(path)
        if builtin is not None:
            if method not in ("GET", "HEAD"):
                raise HttpError(405, f"{method} is not allowed on {path}", headers={"Allow": "GET"})
            status, body = await builtin()
            await _send(send, status, b"" if method == "HEAD" else body, extra)
            return
        match = self.table.match(method, path)
        if match.route is None:
            if match.allowed:
                raise HttpError(
                    405,
                    f"{method} is not allowed on {path}; allowed: {', '.join(match.allowed)}",
                    headers={"Allow": ", ".join(match.allowed)},
                )
            raise HttpError(404, f"no route for {method} {path}")
        route = match.route
        # Names the gateway's server span after the route (a no-op while tracing is off).
        trace.get_current_span().update_name(f"{method} {route.template.text}")
        body = await self._read_body(request)
        try:
            message = build_request(route, match.bindings, request.query_params.multi_items(), body)
        except TranscodeError as exc:
            raise bad_request(exc.field, exc.description) from None
        self._authorize(principal, route, message)
        default = None if route.server_streaming else self.config.default_timeout_s
        timeout = parse_timeout(request.headers, default, self.config.max_timeout_s)
        metadata = self._metadata(request, request_id, principal)
        if route.mutating:
            await self.gate.check(ForwardRequest(route, message, metadata, path))
        upstream = await self._upstream(route, message, metadata, timeout)
        if route.server_streaming:
            call = upstream.stream(route.grpc_path, route.response_class.FromString)(
                message, metadata=metadata, timeout=timeout
            )
            await relay(
                route,
                call,
                sse=wants_sse(request.headers.get("accept", "")),
                first_wait_s=self.config.stream_first_wait_s,
                receive=receive,
                send=send,
                headers=extra,
                upstream_name=upstream.name,
                active=self.streams,
            )
            return
        stub = upstream.unary(route.grpc_path, route.response_class.FromString)
        component = (
            getattr(message, DOMAIN_ID_FIELD, "") if route.by_domain else ""
        ) or route.component
        started = time.monotonic()
        try:
            response = await stub(message, metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            error = from_rpc_error(exc, upstream.name)
            self.calls.record(component, time.monotonic() - started, error=error.http_status >= 500)
            raise error from None
        self.calls.record(component, time.monotonic() - started, error=False)
        await _send(send, 200, dumps(render_response(route, response)), extra)

    async def _read_body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HttpError(413, f"the request body is larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HttpError(413, f"the request body is larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _authenticate(self, request: Request, path: str) -> Principal | None:
        """The caller (None in insecure mode or on /healthz); 401 without a valid token."""
        if self.authenticator is None or path == "/healthz":
            return None
        header = request.headers.get("authorization")
        if header is None:
            raise HttpError(
                401,
                f"authentication required: {HOW_TO_AUTHENTICATE}",
                status="UNAUTHENTICATED",
                headers={"WWW-Authenticate": 'Bearer realm="grace"'},
            )
        try:
            return self.authenticator.from_token(header)
        except AuthError as exc:
            raise HttpError(
                401,
                exc.message,
                status="UNAUTHENTICATED",
                headers={"WWW-Authenticate": 'Bearer realm="grace", error="invalid_token"'},
            ) from None

    def _authorize(self, principal: Principal | None, route: Route, message: Message) -> None:
        """403 unless the access table lets `principal` call the route's RPC with `message`."""
        if self.authenticator is None:
            return
        rule = rule_for(route.grpc_path)
        reason = "no access rule" if rule is None else rule.check(principal, message)
        if reason is not None:
            who = principal.name if principal is not None else "anonymous"
            raise HttpError(
                403,
                f"{route.http_method} {route.template.text} ({route.grpc_path}): {who} "
                f"denied: {reason}",
                status="PERMISSION_DENIED",
            )

    def _metadata(
        self, request: Request, request_id: str, principal: Principal | None = None
    ) -> Metadata:
        headers = request.headers
        pairs: list[tuple[str, str]] = [(REQUEST_ID, request_id)]
        tracing = telemetry.current().enabled
        if principal is not None:
            # Governance sees who authenticated, never a header the caller chose.
            pairs.append(("x-actor", principal.name))
        for name in FORWARDED_HEADERS:
            value = headers.get(name)
            if value is None or (principal is not None and name == "x-actor"):
                continue
            if tracing and name in ("traceparent", "tracestate"):
                continue  # the tracing client interceptor injects the current context
            if not value.isascii() or not value.isprintable():
                raise bad_request(name, "header value must be printable ASCII")
            pairs.append((name, value))
        if request.client is not None:
            pairs.append(("x-forwarded-for", request.client.host))
        return tuple(pairs)

    async def _upstream(
        self, route: Route, message: Message, metadata: Metadata, deadline_s: float | None
    ) -> Upstream:
        if not route.by_domain:
            return self.upstreams.component(route.component)
        field = message.DESCRIPTOR.fields_by_name.get(DOMAIN_ID_FIELD)
        domain_id = getattr(message, DOMAIN_ID_FIELD, "") if field is not None else ""
        if not domain_id:
            raise bad_request(DOMAIN_ID_FIELD, "names the domain to call; it is required")
        return await self.upstreams.domain(domain_id, metadata, deadline_s)

    async def _healthz(self) -> tuple[int, bytes]:
        if self.streams.closing:
            return 503, dumps({"status": "NOT_SERVING"})
        return 200, dumps({"status": "SERVING", "routes": len(self.table)})

    async def _openapi_json(self) -> tuple[int, bytes]:
        return 200, self._openapi

    async def _system_health(self) -> tuple[int, bytes]:
        status, body = await self.system.health()
        return status, dumps(body)

    async def _system_overview(self) -> tuple[int, bytes]:
        return 200, dumps(await self.system.overview())


async def _send(
    send: Send,
    status: int,
    body: bytes,
    extra: list[tuple[bytes, bytes]],
    headers: dict[str, str] | None = None,
) -> None:
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
        *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})
