"""Tracing is configured from the standard variables, and log records carry trace ids."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from services.common.telemetry import TraceContextFilter, _exporter_wanted, configure_logging


def test_exporter_is_chosen_only_when_the_environment_asks() -> None:
    assert _exporter_wanted({}) is None
    assert _exporter_wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317"}) == "otlp"
    assert _exporter_wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x:4317"}) == "otlp"
    assert _exporter_wanted({"OTEL_TRACES_EXPORTER": "console"}) == "console"
    assert (
        _exporter_wanted(
            {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317"}
        )
        is None
    )
    assert (
        _exporter_wanted(
            {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317"}
        )
        is None
    )


def test_log_records_carry_the_current_trace_and_span_ids() -> None:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "m", None, None)
    TraceContextFilter().filter(record)
    assert (record.trace_id, record.span_id) == ("-", "-")

    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        TraceContextFilter().filter(record)
        context = span.get_span_context()
    assert record.trace_id == format(context.trace_id, "032x")
    assert record.span_id == format(context.span_id, "016x")
    assert trace.get_current_span() is trace.INVALID_SPAN


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, its handlers and level put back after the test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_configuring_the_level_already_set_leaves_every_loggers_cache_alone(
    root_logger: logging.Logger,
) -> None:
    # A component forked from the fork server inherits its loggers: clearing each one's
    # cache would write to (and so copy) every page that holds one.
    root_logger.setLevel(logging.INFO)
    inherited = logging.getLogger("tests.telemetry.inherited")
    assert inherited.isEnabledFor(logging.INFO)  # fills its cache
    configure_logging("info")
    assert inherited._cache == {logging.INFO: True}
    assert root_logger.level == logging.INFO

    configure_logging("WARNING")
    assert root_logger.level == logging.WARNING
    assert inherited._cache == {}
    assert not inherited.isEnabledFor(logging.INFO)
