"""An in-process OTLP/gRPC trace receiver: what Jaeger would ingest on 4317, kept in memory."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as it arrived, flattened for assertions."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    status_code: int
    attributes: dict[str, Any]
    links: tuple[tuple[str, str], ...]


def _value(any_value: Any) -> Any:
    field = any_value.WhichOneof("value")
    return getattr(any_value, field) if field else None


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Collects exported spans; `wait_for` polls until a condition on them holds."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self._server: grpc.aio.Server | None = None
        self.endpoint = ""

    async def Export(self, request: Any, context: Any) -> Any:
        for resource_spans in request.resource_spans:
            attributes = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            service = str(attributes.get("service.name", ""))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ReceivedSpan(
                            service=service,
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            kind=span.kind,
                            status_code=span.status.code,
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            links=tuple(
                                (link.trace_id.hex(), link.span_id.hex()) for link in span.links
                            ),
                        )
                    )
        return trace_service_pb2.ExportTraceServiceResponse()

    async def start(self) -> str:
        """Serves on a free loopback port; returns the URL for OTEL_EXPORTER_OTLP_ENDPOINT."""
        self._server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        self.endpoint = f"http://127.0.0.1:{port}"
        return self.endpoint

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)

    async def wait_for(
        self, condition: Callable[[list[ReceivedSpan]], bool], within_s: float = 30.0
    ) -> list[ReceivedSpan]:
        """Polls until `condition(spans)` holds; fails the test with what arrived otherwise."""
        deadline = asyncio.get_running_loop().time() + within_s
        while not condition(self.spans):
            if asyncio.get_running_loop().time() > deadline:
                names = sorted({(s.service, s.name) for s in self.spans})
                raise AssertionError(f"spans never satisfied the condition; got {names}")
            await asyncio.sleep(0.1)
        return self.spans


def exporter_env(endpoint: str) -> dict[str, str]:
    """Variables that make a Grace process export to `endpoint` promptly."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
    }
