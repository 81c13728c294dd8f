"""The gateway's aggregation routes: /domains/system/health and /domains/system/overview.

The overview links to the unified telemetry (`TELEMETRY_LINKS`): the cross-domain figures
and the collaboration graph are the immune kernel's RPCs, routed like any other.

Both cover every upstream component that has routes (so new services join them as their
generated modules appear). Health is the standard `grpc.health.v1.Health/Check` of the whole
server (`""`). The overview calls each service's stats RPCs, found by a naming rule: a
unary method named `Get...Stats` (`GetStats`, `GetRegistryStats`, `GetImmuneStats`, ...),
called with an empty request; and, when the guardian exists, its `ListComponents`. Every
call has its own deadline; a component that fails shows as down with its error, and the
rest of the answer is still given.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import descriptor as _descriptor
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2

from gateway.errors import HttpError, from_rpc_error
from gateway.routes import RouteTable, component_for
from gateway.transcode import to_json_dict
from gateway.upstreams import Upstreams

STATS_METHOD = re.compile(r"Get\w*Stats")
GUARDIAN = "guardian"
GUARDIAN_COMPONENTS_METHOD = "ListComponents"
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_SERVING = health_pb2.HealthCheckResponse.SERVING
# Routes of ImmuneService.GetTelemetry and GetCollaborationGraph (both take `window_seconds`).
TELEMETRY_LINKS = {
    "telemetry": "/domains/system/telemetry",
    "collaboration_graph": "/domains/system/collaboration-graph",
}


def _error_json(error: HttpError) -> dict[str, Any]:
    return dict(error.body()["error"])


class SystemViews:
    """Computes the aggregation routes' answers.

    Args:
        table: The routes (gives the components and their services).
        upstreams: The channels.
        timeout_s: Deadline of each upstream call.
    """

    def __init__(self, table: RouteTable, upstreams: Upstreams, timeout_s: float) -> None:
        self._table = table
        self._upstreams = upstreams
        self._timeout_s = timeout_s

    async def _timed(
        self, component: str, call: Callable[[Any], Awaitable[Any]]
    ) -> tuple[Any, float, HttpError | None]:
        started = time.perf_counter()
        try:
            upstream = self._upstreams.component(component)
            result = await call(upstream)
            return result, (time.perf_counter() - started) * 1000, None
        except HttpError as exc:
            return None, (time.perf_counter() - started) * 1000, exc
        except grpc.aio.AioRpcError as exc:
            return None, (time.perf_counter() - started) * 1000, from_rpc_error(exc, component)

    async def _check(self, component: str) -> dict[str, Any]:
        async def call(upstream: Any) -> Any:
            check = upstream.unary(_HEALTH_CHECK, health_pb2.HealthCheckResponse.FromString)
            return await check(health_pb2.HealthCheckRequest(service=""), timeout=self._timeout_s)

        response, latency, error = await self._timed(component, call)
        entry: dict[str, Any] = {
            "address": self._upstreams.address(component),
            "latency_ms": round(latency, 3),
        }
        if error is not None:
            entry["status"] = "UNREACHABLE" if error.http_status == 503 else error.status
            entry["error"] = _error_json(error)
        else:
            entry["status"] = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
        return entry

    async def health(self) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body): 200 only when every upstream answers SERVING."""
        started = time.perf_counter()
        components = self._table.components()
        results = await asyncio.gather(*(self._check(c) for c in components))
        services = dict(zip(components, results, strict=True))
        healthy = all(r["status"] == "SERVING" for r in results)
        body = {
            "status": "SERVING" if healthy else "NOT_SERVING",
            "services": services,
            "took_ms": round((time.perf_counter() - started) * 1000, 3),
        }
        return (200 if healthy else 503), body

    def _methods(self, component: str) -> list[_descriptor.MethodDescriptor]:
        methods = []
        for service in self._table.services():
            if component_for(service.file.package) != component:
                continue
            for method in service.methods:
                if method.client_streaming or method.server_streaming:
                    continue
                if STATS_METHOD.fullmatch(method.name) or (
                    component == GUARDIAN and method.name == GUARDIAN_COMPONENTS_METHOD
                ):
                    methods.append(method)
        return methods

    async def _call_empty(
        self, component: str, method: _descriptor.MethodDescriptor
    ) -> tuple[Any, float, HttpError | None]:
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        path = f"/{method.containing_service.full_name}/{method.name}"

        async def call(upstream: Any) -> Any:
            stub = upstream.unary(path, response_class.FromString)
            return await stub(request_class(), timeout=self._timeout_s)

        return await self._timed(component, call)

    async def _component_overview(self, component: str) -> tuple[dict[str, Any], Any]:
        methods = self._methods(component)
        health, *calls = await asyncio.gather(
            self._check(component), *(self._call_empty(component, m) for m in methods)
        )
        entry: dict[str, Any] = {
            "status": "up" if health["status"] == "SERVING" else "down",
            "health": health["status"],
            "address": health["address"],
            "latency_ms": health["latency_ms"],
            "stats": {},
        }
        if "error" in health:
            entry["error"] = health["error"]
        components: Any = None
        for method, (response, latency, error) in zip(methods, calls, strict=True):
            if error is not None:
                result: dict[str, Any] = {"error": _error_json(error)}
                if error.http_status in (503, 504):
                    entry["status"] = "down"
            else:
                result = to_json_dict(response)
            result_entry = {"latency_ms": round(latency, 3), **result}
            if method.name == GUARDIAN_COMPONENTS_METHOD:
                components = result_entry
            else:
                entry["stats"][method.name] = result_entry
        return entry, components

    async def overview(self) -> dict[str, Any]:
        """Every component's health and stats, and the guardian's component table."""
        started = time.perf_counter()
        components = self._table.components()
        results = await asyncio.gather(*(self._component_overview(c) for c in components))
        services: dict[str, Any] = {}
        guardian_table: Any = None
        for component, (entry, table) in zip(components, results, strict=True):
            services[component] = entry
            if table is not None:
                guardian_table = table
        if GUARDIAN in services and guardian_table is None:
            guardian_table = {"error": services[GUARDIAN].get("error")}
        up = sum(1 for e in services.values() if e["status"] == "up")
        return {
            "status": "ok" if up == len(services) else "degraded",
            "services_up": up,
            "services_total": len(services),
            "services": services,
            "components": guardian_table,
            "links": TELEMETRY_LINKS,
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "took_ms": round((time.perf_counter() - started) * 1000, 3),
        }
