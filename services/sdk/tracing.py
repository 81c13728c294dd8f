"""Trace context for what a domain does: the traceparent its events carry, and the
consumer span that links a delivered event to its producer."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_tracer = trace.get_tracer("services.sdk")
_trace_context = TraceContextTextMapPropagator()


def current_traceparent(fallback: str = "") -> str:
    """The W3C traceparent of the current span; `fallback` when there is none (tracing
    off), typically the traceparent the caller sent."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent", fallback)


def incoming_traceparent(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The `traceparent` header of a call's metadata, or ""."""
    for key, value in metadata or ():
        if key == "traceparent" and isinstance(value, str):
            return value
    return ""


@contextmanager
def consumer_span(name: str, producer_traceparent: str) -> Iterator[None]:
    """A consumer span linked to the producer's span (a no-op while tracing is off)."""
    links: list[trace.Link] = []
    if producer_traceparent:
        producer = trace.get_current_span(
            _trace_context.extract({"traceparent": producer_traceparent})
        ).get_span_context()
        if producer.is_valid:
            links.append(trace.Link(producer))
    with _tracer.start_as_current_span(name, kind=trace.SpanKind.CONSUMER, links=links):
        yield
