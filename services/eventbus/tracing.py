"""Spans of the event bus: a PRODUCER span per published event (the event then carries its
traceparent), the group commit as a child of the events it writes, and CONSUMER spans for
push and stream delivery, linked to the producers (a delivery is its own trace).

Everything here is skipped while tracing is off: no span objects, no context parsing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from grace.eventbus.v1 import event_pb2
from services.common import telemetry

_tracer = trace.get_tracer("services.eventbus")
_trace_context = TraceContextTextMapPropagator()
MESSAGING_SYSTEM = "grace"


def _event_attributes(event: event_pb2.Event) -> dict[str, str | int]:
    return {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.destination.name": event.event_type,
        "messaging.message.id": event.id,
        "grace.event.source_domain": event.source_domain,
    }


@contextmanager
def producer_spans(events: Sequence[event_pb2.Event]) -> Iterator[None]:
    """One PRODUCER span per event, child of the trace context the event carries (else of
    the current span, the Publish call), open while the events are appended. Each event's
    `traceparent` becomes its producer span's, so consumers link to the publish itself.
    The traceparent is not part of the signed bytes, so signatures stay valid."""
    if not telemetry.enabled() or not events:
        yield
        return
    spans: list[trace.Span] = []
    for event in events:
        parent = telemetry.context_from_traceparent(event.traceparent)
        if parent is not None and event.tracestate:
            parent = _trace_context.extract(
                {"traceparent": event.traceparent, "tracestate": event.tracestate}
            )
        span = _tracer.start_span(
            f"publish {event.event_type}",
            context=parent,
            kind=trace.SpanKind.PRODUCER,
            attributes=_event_attributes(event),
        )
        carrier: dict[str, str] = {}
        _trace_context.inject(carrier, context=trace.set_span_in_context(span))
        event.traceparent = carrier.get("traceparent", event.traceparent)
        spans.append(span)
    try:
        yield
    except Exception as exc:
        for span in spans:
            span.record_exception(exc)
            span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)))
        raise
    finally:
        for span in spans:
            span.end()


def commit_span(
    events: Sequence[event_pb2.Event], groups: int
) -> AbstractContextManager[trace.Span | None]:
    """The group commit's span: child of the first event's producer span, linked to the
    other events' (a no-op while tracing is off)."""
    parents: list[otel_context.Context | None] = []
    if telemetry.enabled():
        parents = [telemetry.context_from_traceparent(e.traceparent) for e in events]
    return telemetry.batch_span(
        _tracer,
        "eventbus.commit",
        parents,
        {"grace.events": len(events), "grace.publish_calls": groups},
    )


def _links(events: Sequence[event_pb2.Event]) -> list[trace.Link]:
    links: list[trace.Link] = []
    seen: set[str] = set()
    for event in events:
        if event.traceparent in seen or len(links) >= telemetry.MAX_LINKS:
            continue
        seen.add(event.traceparent)
        parent = telemetry.context_from_traceparent(event.traceparent)
        if parent is not None:
            links.append(trace.Link(trace.get_current_span(parent).get_span_context()))
    return links


@contextmanager
def push_span(event: event_pb2.Event, subscription_id: str, domain_id: str) -> Iterator[None]:
    """The CONSUMER span of pushing one event to a domain (every attempt inside it): a new
    trace linked to the event's producer span; the DeliverEvent calls are its children."""
    if not telemetry.enabled():
        yield
        return
    attributes = {
        **_event_attributes(event),
        "messaging.operation.type": "process",
        "grace.subscription.id": subscription_id,
        "grace.domain.id": domain_id,
        "grace.event.sequence": event.sequence,
    }
    with _tracer.start_as_current_span(
        f"deliver {event.event_type}",
        context=otel_context.Context(),
        kind=trace.SpanKind.CONSUMER,
        links=_links([event]),
        attributes=attributes,
    ):
        yield


@contextmanager
def push_batch_span(
    events: Sequence[event_pb2.Event], subscription_id: str, domain_id: str
) -> Iterator[None]:
    """The CONSUMER span of pushing several events to a domain in one DeliverEvents call: a
    new trace linked to the events' producer spans; the call is its child."""
    if not telemetry.enabled():
        yield
        return
    with _tracer.start_as_current_span(
        "deliver events",
        context=otel_context.Context(),
        kind=trace.SpanKind.CONSUMER,
        links=_links(events),
        attributes={
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.operation.type": "process",
            "messaging.batch.message_count": len(events),
            "grace.subscription.id": subscription_id,
            "grace.domain.id": domain_id,
            "grace.event.sequence": events[0].sequence,
        },
    ):
        yield


def stream_span(batch: Sequence[event_pb2.Event], consumer: str) -> trace.Span | None:
    """A started CONSUMER span for sending one batch on a Subscribe stream, linked to the
    producers of its events (the caller ends it); None while tracing is off."""
    if not telemetry.enabled():
        return None
    return _tracer.start_span(
        "stream events",
        context=otel_context.Context(),
        kind=trace.SpanKind.CONSUMER,
        links=_links(batch),
        attributes={
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.operation.type": "receive",
            "messaging.batch.message_count": len(batch),
            "grace.consumer": consumer,
        },
    )


def mark_failed(reason: str) -> None:
    """Marks the current span (a delivery) as failed."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_status(trace.Status(trace.StatusCode.ERROR, reason))
