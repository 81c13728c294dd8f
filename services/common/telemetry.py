"""OpenTelemetry and logging set-up shared by every Grace process.

Tracing follows the standard `OTEL_*` variables. When none of them asks for an exporter,
no SDK is installed: the API stays a no-op, nothing is exported and no interceptor adds
cost to the hot paths. When one does (`OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or `OTEL_TRACES_EXPORTER=otlp|console`), spans go
through a batch processor; `service.name` is `OTEL_SERVICE_NAME` or the component name, and
sampling follows `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG` as the SDK reads them.

Background work nobody asked for is not traced: a span that would start a trace for a
lease heartbeat, an outbox relay's batch, a metrics report or a health probe is dropped
(and so are its children, through the sampled flag), so a user's request is not lost among
them. `GRACE_TRACE_BACKGROUND=true` traces them too. Shutdown waits at most
`SHUTDOWN_TIMEOUT_S` for the exporter to flush, so an unreachable collector never holds a
stopping process.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

# Longest wait for the exporter's last flush when a process stops.
SHUTDOWN_TIMEOUT_S = 2.0
# Root spans of background work (gRPC method names, as the instrumentation names spans,
# and the outbox-to-log relay's span when no entry carries a trace): not sampled unless
# GRACE_TRACE_BACKGROUND=true.
BACKGROUND_SPANS = frozenset(
    {
        "/grace.registry.v1.RegistryService/Heartbeat",
        "/grace.eventbus.v1.EventBusService/PublishBatch",
        "/grace.kernels.immune.v1.ImmuneService/ReportMetrics",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "log append",
    }
)


@dataclass
class Telemetry:
    """Handle on the tracing set-up of one process.

    Attributes:
        enabled: True when an SDK tracer provider with an exporter is installed.
        provider: The SDK provider, when enabled.
    """

    enabled: bool = False
    provider: Any = None

    def server_interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """The tracing server interceptor (health checks excluded), when enabled."""
        if not self.enabled:
            return []
        from opentelemetry.instrumentation.grpc import aio_server_interceptor
        from opentelemetry.instrumentation.grpc.filters import health_check, negate

        # Health is excluded: probes are noise in traces, and the stock asyncio health Watch
        # breaks under this interceptor (opentelemetry-python-contrib #3066).
        return [
            aio_server_interceptor(tracer_provider=self.provider, filter_=negate(health_check()))
        ]

    def client_interceptors(self) -> Sequence[grpc.aio.ClientInterceptor]:
        """The tracing client interceptors, when enabled."""
        if not self.enabled:
            return []
        from opentelemetry.instrumentation.grpc import aio_client_interceptors
        from opentelemetry.instrumentation.grpc.filters import health_check, negate

        # Health probes (Guardian's, every few seconds) would bury the traces users read.
        return list(
            aio_client_interceptors(tracer_provider=self.provider, filter_=negate(health_check()))
        )

    def shutdown(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> bool:
        """Flushes and stops the exporter, waiting at most `timeout_s`.

        Returns False when the flush did not end in time (an unreachable collector): the
        spans still queued are dropped rather than holding the process.
        """
        if self.provider is None:
            return True
        provider = self.provider
        stopper = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
        stopper.start()
        stopper.join(timeout_s)
        if stopper.is_alive():
            log.warning(
                "trace export did not finish within %.1fs; dropping what is queued", timeout_s
            )
            return False
        return True


_process_telemetry = Telemetry()


def current() -> Telemetry:
    """The telemetry configured for this process (disabled until `configure_tracing`)."""
    return _process_telemetry


_TRACE_CONTEXT = TraceContextTextMapPropagator()
# The SDK keeps at most 128 links per span; a group commit links that many callers at most.
MAX_LINKS = 64


def enabled() -> bool:
    """True when this process exports spans (cheap: guard optional spans with it)."""
    return _process_telemetry.enabled


def current_traceparent(fallback: str = "") -> str:
    """The W3C traceparent of the current span, or `fallback` when there is none."""
    if not _process_telemetry.enabled:
        return fallback
    carrier: dict[str, str] = {}
    _TRACE_CONTEXT.inject(carrier)
    return carrier.get("traceparent", fallback)


def context_from_traceparent(traceparent: str) -> otel_context.Context | None:
    """The context a W3C traceparent names, or None when it is empty or malformed."""
    if not traceparent:
        return None
    extracted = _TRACE_CONTEXT.extract({"traceparent": traceparent})
    if not trace.get_current_span(extracted).get_span_context().is_valid:
        return None
    return extracted


def capture_context() -> otel_context.Context | None:
    """The current context when tracing is on (to parent work done later, elsewhere)."""
    return otel_context.get_current() if _process_telemetry.enabled else None


@contextmanager
def batch_span(
    tracer: trace.Tracer,
    name: str,
    parents: Sequence[otel_context.Context | None],
    attributes: Mapping[str, Any] | None = None,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
) -> Iterator[trace.Span | None]:
    """A span for work done once on behalf of many callers (a group commit).

    It is a child of the first caller's context and links to the other callers' spans, so
    each request's trace shows the commit it waited for. Nothing happens (and None is
    yielded) while tracing is off.
    """
    if not _process_telemetry.enabled:
        yield None
        return
    valid = [p for p in parents if p is not None]
    links: list[trace.Link] = []
    seen: set[tuple[int, int]] = set()
    for parent in valid[1:]:
        span_context = trace.get_current_span(parent).get_span_context()
        key = (span_context.trace_id, span_context.span_id)
        if span_context.is_valid and key not in seen and len(links) < MAX_LINKS:
            seen.add(key)
            links.append(trace.Link(span_context))
    with tracer.start_as_current_span(
        name,
        context=valid[0] if valid else None,
        kind=kind,
        links=links,
        attributes=dict(attributes or {}),
    ) as span:
        yield span


def _exporter_wanted(env: Mapping[str, str]) -> str | None:
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    choice = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if choice in ("none",):
        return None
    if choice in ("otlp", "console"):
        return choice
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return "otlp"
    return None


def configure_tracing(service_name: str, env: Mapping[str, str]) -> Telemetry:
    """Installs the OpenTelemetry SDK for this process when the environment asks for it.

    Args:
        service_name: Default `service.name` (the component name).
        env: Environment to read the OTEL_* variables from.
    """
    global _process_telemetry
    exporter_kind = _exporter_wanted(env)
    if exporter_kind is None:
        _process_telemetry = Telemetry()
        return _process_telemetry
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    name = env.get("OTEL_SERVICE_NAME") or service_name
    # The sampler OTEL_TRACES_SAMPLER asks for (the SDK's reading of it), minus background
    # work unless asked for.
    sampler: Any = TracerProvider(shutdown_on_exit=False).sampler
    if env.get("GRACE_TRACE_BACKGROUND", "").strip().lower() != "true":
        sampler = QuietBackground(sampler)
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}), sampler=sampler)
    exporter: SpanExporter
    if exporter_kind == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        # Passed explicitly: `env` may hold more than os.environ (`grace up --otlp`).
        options: dict[str, Any] = {}
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        if endpoint:
            options["endpoint"] = endpoint
        insecure = env.get("OTEL_EXPORTER_OTLP_TRACES_INSECURE") or env.get(
            "OTEL_EXPORTER_OTLP_INSECURE"
        )
        if insecure:
            options["insecure"] = insecure.strip().lower() == "true"
        exporter = OTLPSpanExporter(**options)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _process_telemetry = Telemetry(enabled=True, provider=provider)
    log.info("tracing enabled: exporter=%s service.name=%s", exporter_kind, name)
    return _process_telemetry


def _sampling() -> Any:
    from opentelemetry.sdk.trace import sampling

    return sampling


class QuietBackground:
    """A sampler that drops traces started by background work (`BACKGROUND_SPANS`) and
    leaves every other decision to `delegate`.

    A span with a parent follows the delegate (parent-based by default), so background
    calls made inside a user's request stay in that request's trace.
    """

    def __init__(self, delegate: Any) -> None:
        self.delegate = delegate

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: trace.SpanKind | None = None,
        attributes: Any = None,
        links: Sequence[trace.Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> Any:
        parent = trace.get_current_span(parent_context).get_span_context()
        if not parent.is_valid and name in BACKGROUND_SPANS:
            sampling = _sampling()
            return sampling.SamplingResult(sampling.Decision.DROP)
        return self.delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"QuietBackground{{{self.delegate.get_description()}}}"


class TraceContextFilter(logging.Filter):
    """Adds `trace_id` and `span_id` of the current span to every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        else:
            record.trace_id = "-"
            record.span_id = "-"
        return True


# The level of a component's logs (`configure_logging`'s default).
DEFAULT_LOG_LEVEL = "INFO"


def configure_logging(level: str = DEFAULT_LOG_LEVEL) -> None:
    """Configures the root logger for a Grace process; called only from `__main__`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TraceContextFilter())
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s [trace_id=%(trace_id)s span_id=%(span_id)s] "
            "%(message)s"
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Only when it changes: `setLevel` clears the level cache of every logger in the
    # process, and in a component forked from the fork server (which sets this level
    # before it imports anything) that writes to, and so copies, every page holding one
    # of the inherited loggers: about 0.5 MB per component.
    if logging.getLevelName(root.level) != level.upper():
        root.setLevel(level.upper())
