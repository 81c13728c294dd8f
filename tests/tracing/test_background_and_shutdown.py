"""Traces people can read: background work is not traced, and shutdown never hangs."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision

from services.common.telemetry import BACKGROUND_SPANS, QuietBackground, context_from_traceparent

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
HEARTBEAT = "/grace.registry.v1.RegistryService/Heartbeat"


def test_a_heartbeat_that_would_start_a_trace_is_dropped() -> None:
    sampler = QuietBackground(ALWAYS_ON)
    for name in BACKGROUND_SPANS:
        assert sampler.should_sample(None, 1, name).decision == Decision.DROP
    kept = sampler.should_sample(None, 1, "/grace.registry.v1.RegistryService/RegisterDomain")
    assert kept.decision == Decision.RECORD_AND_SAMPLE


def test_background_calls_made_inside_a_request_stay_in_its_trace() -> None:
    parent = context_from_traceparent(PARENT)
    assert trace.get_current_span(parent).get_span_context().is_valid
    result = QuietBackground(ALWAYS_ON).should_sample(parent, 1, HEARTBEAT)
    assert result.decision == Decision.RECORD_AND_SAMPLE


@pytest.fixture
def silent_collector() -> Iterator[str]:
    """A port that accepts connections and never answers: the worst collector."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


SCRIPT = """
import sys, time
from opentelemetry import trace
from services.common import telemetry
handle = telemetry.configure_tracing("probe", {
    "OTEL_EXPORTER_OTLP_ENDPOINT": sys.argv[1], "OTEL_EXPORTER_OTLP_INSECURE": "true"})
with trace.get_tracer("t").start_as_current_span("work"):
    pass
started = time.monotonic()
finished = handle.shutdown()
print(f"{time.monotonic() - started:.2f} {finished}")
"""


def test_shutdown_gives_up_on_a_collector_that_never_answers(silent_collector: str) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, silent_collector],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    waited, finished = result.stdout.split()
    assert finished == "False"  # it did not pretend the spans were sent
    assert float(waited) < 2.5
    # The whole process, interpreter exit included, is not held by the exporter.
    assert elapsed < 15, f"the process took {elapsed:.1f}s to exit"
