"""The gateway as an ASGI application (served by uvicorn; requests parsed with Starlette).

One request: put the path in canonical form (`gateway.paths`: 400 for a path with no single
meaning), authenticate the bearer token (secure mode: 401 without a valid one, except
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

import asyncio
import functools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

import grpc
from google.protobuf.message import Message
from opentelemetry import trace
from starlette.requests import Request

from gateway.aliases import has_aliases, rewrite_body, source_of
from gateway.approvals import upstream_pending
from gateway.config import GatewayConfig
from gateway.errors import HttpError, bad_request, from_rpc_error
from gateway.paths import canonical_path
from gateway.routes import DOMAIN_ID_FIELD, Route, RouteTable
from gateway.streaming import LAST_EVENT_ID, ActiveStreams, apply_last_event_id, relay, wants_sse
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
FORWARDED_HEADERS = (
    "traceparent",
    "tracestate",
    "x-actor",
    "authorization",
    "x-governance-decision",
)
REQUEST_ID = "x-request-id"
# gRPC refuses metadata over 8 KiB (grpc.max_metadata_size, at random near the limit), which
# the gateway would report as a 429 RESOURCE_EXHAUSTED; headers are the client's to shrink,
# so they get 431 instead. 7 KiB leaves room for the metadata gRPC adds itself.
MAX_FORWARDED_HEADER_BYTES = 7 * 1024
MAX_HEADER_BYTES = 16 * 1024
_GRPC_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")
MIN_TIMEOUT_S = 0.001
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


async def _always_reachable() -> None:
    return None


@dataclass(frozen=True)
class ForwardRequest:
    """What the forward gate sees of a request about to be forwarded.

    Attributes:
        route: The matched route (method, gRPC method, component).
        message: The built gRPC request.
        metadata: The metadata that will be sent (x-actor, authorization, ...).
        path: The canonical, percent-decoded path requested (`gateway.paths`); governance
            asks about `METHOD:path`.
        headers: The request's headers, lower-case names (`x-retry-token`, `prefer`).
        reachable: Waits until the request can be sent (its upstream connected), or
            raises `HttpError` 503 when it cannot be within the request's deadline. A gate
            awaits it before it spends anything on the request (an approval redeemed
            once), so that an upstream that is down costs the client nothing but a retry.
    """

    route: Route
    message: Message
    metadata: Metadata
    path: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    reachable: Callable[[], Awaitable[None]] = _always_reachable


class ForwardGate(Protocol):
    """The hook point for asking before a mutating request is forwarded.

    The gateway calls `check` for every route whose HTTP method is not GET, after the
    request is built and its upstream found, before it is sent. To refuse, raise
    `HttpError` (for example 403 PERMISSION_DENIED with the policy's reasons). Governance
    plugs in here (`gateway.governance`).
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
        openapi: Builds the OpenAPI document served at /openapi.json. It is built at the
            first request for it, not at start-up: reading the proto comments and building
            the document are a third of the gateway's start-up CPU, on the boot's last step.
        gate: Asked before each mutating request is forwarded.
        authenticator: Validates bearer tokens; None serves everyone (insecure mode).
    """

    def __init__(
        self,
        config: GatewayConfig,
        table: RouteTable,
        upstreams: Upstreams,
        openapi: Callable[[], dict[str, Any]],
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
        self._build_openapi = openapi
        self._openapi: bytes | None = None
        self._openapi_lock = asyncio.Lock()
        self._builtins: dict[str, Callable[[], Awaitable[tuple[int, bytes]]]] = {
            "/healthz": self._healthz,
            "/openapi.json": self._openapi_json,
            "/domains/system/health": self._system_health,
            # Seed 003: `curl localhost:8000/health` checks everything.
            "/health": self._system_health,
            "/domains/system/overview": self._system_overview,
        }

    @staticmethod
    def builtin_paths() -> list[str]:
        """The paths the gateway serves itself (GET only)."""
        return [
            "/healthz",
            "/health",
            "/openapi.json",
            "/domains/system/health",
            "/domains/system/overview",
        ]

    def begin_shutdown(self) -> None:
        """Reports NOT_SERVING on /healthz and ends open streams."""
        self.streams.cancel_all()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        # With tracing on, the ASGI instrumentation around this app (gateway.server) has
        # opened the request's SERVER span; _handle names it after the matched route.
        await self._serve(Request(scope, receive), receive, send)

    async def _serve(self, request: Request, receive: Receive, send: Send) -> None:
        scope = request.scope
        headers = header_dict(scope.get("headers", ()))
        request_id = headers.get(REQUEST_ID, "")
        if not request_id or len(request_id) > 128:
            request_id = new_request_id()
        extra = [(b"x-request-id", request_id.encode("latin-1", "replace"))]
        try:
            check_header_sizes(scope.get("headers", ()))
            await self._handle(request, headers, request_id, receive, send, extra)
        except HttpError as exc:
            await _send(send, exc.http_status, dumps(exc.body()), extra, exc.headers)
        except _ClientGone:
            # The client went away before its request was complete: nobody to answer.
            log.debug("client left during %s %s", scope.get("method"), scope.get("path"))
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
        headers: Mapping[str, str],
        request_id: str,
        receive: Receive,
        send: Send,
        extra: list[tuple[bytes, bytes]],
    ) -> None:
        method = request.method
        raw_path = request.scope.get("raw_path")
        # Routing and governance both see the canonical path (see gateway.paths).
        canonical = canonical_path(
            raw_path.decode("latin-1") if raw_path else quote(request.url.path)
        )
        path = canonical.encoded
        principal = self._authenticate(headers, path)
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
        tracing = telemetry.current().enabled
        if tracing:
            # Names the gateway's server span after the route.
            trace.get_current_span().update_name(f"{method} {route.template.text}")
        body = await self._read_body(headers, receive)
        if has_aliases(route.method.full_name):
            # The caller a seed's omitted source defaults to: the authenticated principal,
            # or in an insecure Grace the X-Actor header.
            caller = headers if principal is None else {"x-actor": source_of(principal)}
            body = rewrite_body(route.method.full_name, body, caller)
        try:
            message = build_request(route, match.bindings, _query(request), body)
        except TranscodeError as exc:
            raise bad_request(exc.field, exc.description) from None
        self._authorize(principal, route, message)
        default = None if route.server_streaming else self.config.default_timeout_s
        timeout = parse_timeout(headers, default, self.config.max_timeout_s)
        metadata = self._metadata(request, headers, request_id, principal, tracing)
        upstream = await self._upstream(route, message, metadata, timeout)
        if route.mutating:
            await self.gate.check(
                ForwardRequest(
                    route,
                    message,
                    metadata,
                    canonical.decoded,
                    dict(headers),
                    reachable=functools.partial(upstream.connected, timeout),
                )
            )
        if route.server_streaming:
            last_event_id = headers.get(LAST_EVENT_ID)
            if last_event_id is not None:
                apply_last_event_id(message, last_event_id)
            call = upstream.stream(route.grpc_path, route.response_class.FromString)(
                message, metadata=metadata, timeout=timeout
            )
            await relay(
                route,
                call,
                sse=wants_sse(headers.get("accept", "")),
                first_wait_s=self.config.stream_first_wait_s,
                receive=receive,
                send=send,
                headers=extra,
                upstream_name=upstream.name,
                active=self.streams,
                ping_s=self.config.sse_ping_s,
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
            if route.by_domain and exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                error = _not_a_domain(component, route)
            self.calls.record(component, time.monotonic() - started, error=error.http_status >= 500)
            raise upstream_pending(error) or error from None
        self.calls.record(component, time.monotonic() - started, error=False)
        await _send(send, 200, dumps(render_response(route, response)), extra)

    async def _read_body(self, headers: Mapping[str, str], receive: Receive) -> bytes:
        """The whole body: 413 over the limit, 400 when it stops arriving (a Content-Length
        larger than what the client sends), and `_ClientGone` when the client leaves."""
        limit = self.config.max_body_bytes
        declared = headers.get("content-length")
        if declared in (None, "0") and "transfer-encoding" not in headers:
            # No body framed (HTTP/1.1: neither header): nothing to wait for. Most GETs; it
            # saves a timed receive per request.
            return b""
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HttpError(413, f"the request body is larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.config.body_idle_s)
            except TimeoutError:
                expected = f" of the {declared} bytes Content-Length declares" if declared else ""
                raise HttpError(
                    400,
                    f"the request body stopped after {size}{expected}: nothing more arrived "
                    f"for {self.config.body_idle_s:g} s",
                    headers={"Connection": "close"},
                ) from None
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise HttpError(413, f"the request body is larger than {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _authenticate(self, headers: Mapping[str, str], path: str) -> Principal | None:
        """The caller (None in insecure mode or on /healthz); 401 without a valid token."""
        if self.authenticator is None or path == "/healthz":
            return None
        header = headers.get("authorization")
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
        self,
        request: Request,
        headers: Mapping[str, str],
        request_id: str,
        principal: Principal | None = None,
        tracing: bool = False,
    ) -> Metadata:
        pairs: list[tuple[str, str]] = [(REQUEST_ID, request_id)]
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
        client = request.scope.get("client")
        if client is not None:
            pairs.append(("x-forwarded-for", client[0]))
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
        async with self._openapi_lock:  # built once, in a thread: off the event loop
            if self._openapi is None:
                await asyncio.to_thread(self.openapi_json)
        return 200, self.openapi_json()

    def openapi_json(self) -> bytes:
        """The OpenAPI document as JSON, built at the first call."""
        if self._openapi is None:
            self._openapi = dumps(self._build_openapi())
        return self._openapi

    async def _system_health(self) -> tuple[int, bytes]:
        status, body = await self.system.health()
        return status, dumps(body)

    async def _system_overview(self) -> tuple[int, bytes]:
        return 200, dumps(await self.system.overview())


def _not_a_domain(domain_id: str, route: Route) -> HttpError:
    """404 for a DomainService call to a registered peer that does not serve DomainService:
    Grace's own components (registry, eventbus, memory, orchestrator, ...) register so that
    they can be discovered, but they are not domains one can describe, invoke or deliver to."""
    service = route.method.containing_service.full_name
    return HttpError(
        404,
        f"{domain_id!r} is registered but does not serve {service}.{route.method.name}, so "
        "it is not a domain (Grace's own components register to be found and serve only "
        "their own routes)",
        status="NOT_FOUND",
        details=[
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "NOT_A_DOMAIN",
                "domain": "grace.gateway",
                "metadata": {"domain_id": domain_id, "method": route.grpc_path},
            }
        ],
    )


def new_request_id() -> str:
    """A random request id: what `uuid.uuid4().hex` returns (a version 4, RFC 4122 variant
    UUID in 32 hex digits), without building a `UUID` object for every request."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    return raw.hex()


def header_dict(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The request's headers by lower-case name; of a repeated header, the first value (as
    Starlette's `Headers.get` answers). Built once per request: each `Headers.get` scans the
    whole list again, and most of the gateway's lookups are misses that raise inside it."""
    headers: dict[str, str] = {}
    for name, value in raw:
        headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return headers


def _query(request: Request) -> list[tuple[str, str]]:
    """The query parameters in order; most requests have none, and Starlette parses even an
    empty query string."""
    if not request.scope.get("query_string"):
        return []
    return request.query_params.multi_items()


class _ClientGone(Exception):
    """The HTTP client disconnected before its request was complete."""


def check_header_sizes(headers: Iterable[tuple[bytes, bytes]]) -> None:
    """431 when the headers are too large to accept or to forward as gRPC metadata.

    Raises:
        HttpError: 431 naming the largest offending header.
    """
    total = forwarded = 0
    largest = largest_forwarded = (0, "")
    for name, value in headers:
        size = len(name) + len(value)
        total += size
        lowered = name.decode("latin-1").lower()
        if lowered in FORWARDED_HEADERS:  # (x-request-id is passed on only up to 128 chars)
            forwarded += size
            largest_forwarded = max(largest_forwarded, (size, lowered))
        largest = max(largest, (size, lowered))
    if total > MAX_HEADER_BYTES:
        raise HttpError(
            431,
            f"the request headers total {total} bytes, more than {MAX_HEADER_BYTES}; "
            f"the largest is {largest[1]} ({largest[0]} bytes)",
        )
    if forwarded > MAX_FORWARDED_HEADER_BYTES:
        names = ", ".join(FORWARDED_HEADERS)
        raise HttpError(
            431,
            f"the headers passed on upstream ({names}) total {forwarded} bytes, more than "
            f"{MAX_FORWARDED_HEADER_BYTES}; the largest is {largest_forwarded[1]} "
            f"({largest_forwarded[0]} bytes)",
        )


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
