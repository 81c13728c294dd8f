"""`grace up --otlp` end to end: the seed's document workflow is one trace across Grace.

The test boots everything (with the example domains) under `grace up`, exporting to an
in-process OTLP receiver, runs the document workflow through the gateway with a
`traceparent` header, and reads the trace that arrives as Jaeger would.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.grace_up import RunningGrace, running_grace
from tests.tracing.otlp_receiver import OtlpReceiver, ReceivedSpan, exporter_env

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
FAILING_TRACE_ID = "5b8aa5a2d2c872e8321cf37308d69df2"
CLIENT_SPAN = "b7ad6b7169203331"
CREATE_SPAN = "00f067aa0ba902b7"
FAILING_SPAN = "53995c3f42cd8ad8"
DOMAINS = ("data_domain", "ai_domain", "memory_domain")
EXECUTE_RPC = "/grace.domain.v1.DomainService/Execute"
SPAN_KIND_SERVER, SPAN_KIND_CLIENT, SPAN_KIND_PRODUCER, SPAN_KIND_CONSUMER = 2, 3, 4, 5
STATUS_ERROR = 2

DOCUMENT_WORKFLOW = {
    "name": "process_document",
    "description": "ingest, analyze, store (the seed's document workflow)",
    "steps": [
        {"id": "ingest", "domain_id": "data_domain", "action": "ingest"},
        {
            "id": "analyze",
            "domain_id": "ai_domain",
            "action": "analyze",
            "depends_on": ["ingest"],
        },
        {
            "id": "store",
            "domain_id": "memory_domain",
            "action": "store",
            "depends_on": ["analyze"],
        },
    ],
}
FAILING_WORKFLOW = {
    "name": "process_document_broken",
    "steps": [
        {"id": "ingest", "domain_id": "data_domain", "action": "ingest"},
        {
            "id": "analyze",
            "domain_id": "ai_domain",
            "action": "no_such_action",
            "depends_on": ["ingest"],
            "retry": {"max_attempts": 1},
        },
    ],
}
DOCUMENT = {
    "document": {
        "title": "Release notes",
        "text": "Grace is fast and reliable. Tracing shows every step of a workflow.",
    }
}


def _traceparent(trace_id: str, span_id: str) -> str:
    return f"00-{trace_id}-{span_id}-01"


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    collector = OtlpReceiver()
    await collector.start()
    yield collector
    await collector.stop()


@pytest.fixture
async def grace(tmp_path: Path, receiver: OtlpReceiver) -> AsyncIterator[RunningGrace]:
    """Runs `grace up --with-examples --otlp <receiver>` with every component on a free
    port; yields it; kills the whole process group at the end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    # Prompt export; the endpoint itself comes from --otlp.
    env.update(
        {k: v for k, v in exporter_env(receiver.endpoint).items() if "OTLP" not in k},
    )
    async with running_grace(
        tmp_path,
        config="[probe]\ninterval_s = 0.5\n",
        args=("--otlp", receiver.endpoint),
        env=env,
    ) as platform:
        yield platform


async def _create(http: httpx.AsyncClient, workflow: dict[str, Any], traceparent: str) -> str:
    """Creates a workflow, waiting until the example domains have registered themselves."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        response = await http.post(
            "/domains/workflows/create", json=workflow, headers={"traceparent": traceparent}
        )
        if response.status_code == 200:
            return str(response.json()["workflow_id"])
        assert response.status_code == 400, response.text  # a domain not registered yet
        assert asyncio.get_running_loop().time() < deadline, response.text
        await asyncio.sleep(0.3)


async def _execute(http: httpx.AsyncClient, workflow_id: str, traceparent: str) -> dict[str, Any]:
    response = await http.post(
        f"/domains/workflows/execute/{workflow_id}",
        json={"input": DOCUMENT, "wait": True},
        headers={"traceparent": traceparent},
    )
    assert response.status_code == 200, response.text
    return dict(response.json()["execution"])


def _one(spans: list[ReceivedSpan], **where: Any) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in where.items())]
    assert len(found) == 1, f"expected one span with {where}, got {found}"
    return found[0]


def _in(trace_id: str, spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return [s for s in spans if s.trace_id == trace_id]


def _has_step_spans(trace_id: str, steps: int) -> Any:
    def condition(spans: list[ReceivedSpan]) -> bool:
        mine = _in(trace_id, spans)
        return sum(1 for s in mine if s.name.startswith("step ")) >= steps and any(
            s.name.startswith("execution ") for s in mine
        )

    return condition


@pytest.mark.slow
async def test_the_document_workflow_is_one_trace_from_the_gateway_to_every_domain(
    grace: RunningGrace, receiver: OtlpReceiver
) -> None:
    async with grace.http() as http:
        workflow_id = await _create(http, DOCUMENT_WORKFLOW, _traceparent(TRACE_ID, CREATE_SPAN))
        execution = await _execute(http, workflow_id, _traceparent(TRACE_ID, CLIENT_SPAN))
        assert execution["state"] == "EXECUTION_STATE_SUCCEEDED", execution
        failing_id = await _create(http, FAILING_WORKFLOW, _traceparent(FAILING_TRACE_ID, "1" * 16))
        failed = await _execute(http, failing_id, _traceparent(FAILING_TRACE_ID, FAILING_SPAN))
        assert failed["state"] == "EXECUTION_STATE_ROLLED_BACK", failed

    def complete(spans: list[ReceivedSpan]) -> bool:
        mine = _in(TRACE_ID, spans)
        services = {s.service for s in mine}
        producers = {s.span_id for s in mine if s.kind == SPAN_KIND_PRODUCER}
        delivered = any(
            s.kind == SPAN_KIND_CONSUMER and any(span in producers for _, span in s.links)
            for s in spans
        )
        return (
            _has_step_spans(TRACE_ID, 3)(spans)
            and {"gateway", "orchestrator", "registry", "eventbus", *DOMAINS} <= services
            and sum(1 for s in mine if s.name == EXECUTE_RPC and s.kind == SPAN_KIND_SERVER) >= 3
            and delivered
            # The handler's span is exported by another process, possibly in a later batch.
            and any(
                s.service == "memory_domain" and s.name == "handle ml.analysis_complete"
                for s in spans
            )
        )

    spans = await receiver.wait_for(complete, within_s=30)
    trace = _in(TRACE_ID, spans)
    assert not [s for s in spans if "grpc.health" in s.name], "health probes are not traced"
    # Lease heartbeats and metrics reports run every few seconds: not traced by default.
    assert not [s for s in spans if s.name.endswith(("/Heartbeat", "/ReportMetrics"))]

    # Gateway: its own server span continues the client's traceparent; its client spans
    # (asking governance, then forwarding the call) are that span's children.
    gateway = _one(trace, service="gateway", kind=SPAN_KIND_SERVER, parent_span_id=CLIENT_SPAN)
    assert gateway.name == "POST /domains/workflows/execute/{workflow_id}"
    # The ASGI instrumentation's standard HTTP attributes.
    assert gateway.attributes["http.request.method"] == "POST"
    assert gateway.attributes["url.path"] == f"/domains/workflows/execute/{workflow_id}"
    assert gateway.attributes["http.response.status_code"] == 200
    gateway_call = _one(
        trace,
        service="gateway",
        kind=SPAN_KIND_CLIENT,
        parent_span_id=gateway.span_id,
        name="/grace.orchestrator.v1.OrchestratorService/ExecuteWorkflow",
    )
    _one(
        trace,
        service="gateway",
        kind=SPAN_KIND_CLIENT,
        parent_span_id=gateway.span_id,
        name="/grace.kernels.governance.v1.GovernanceService/Evaluate",
    )
    server = _one(trace, service="orchestrator", parent_span_id=gateway_call.span_id)
    assert server.kind == SPAN_KIND_SERVER
    execution_span = _one(
        trace,
        service="orchestrator",
        parent_span_id=server.span_id,
        name="execution process_document",
    )
    assert execution_span.attributes["grace.execution.id"] == execution["execution_id"]

    # One span per step under the execution span, and under each the domain's server span
    # (through the orchestrator's client span), and the SDK's action span under that.
    for step_id, domain, action in (
        ("ingest", "data_domain", "ingest"),
        ("analyze", "ai_domain", "analyze"),
        ("store", "memory_domain", "store"),
    ):
        step = _one(trace, name=f"step {step_id}")
        assert step.parent_span_id == execution_span.span_id
        assert step.attributes["grace.workflow.id"] == workflow_id
        assert step.attributes["grace.execution.id"] == execution["execution_id"]
        assert step.attributes["grace.step.id"] == step_id
        assert step.attributes["grace.domain.id"] == domain
        assert step.attributes["grace.step.action"] == action
        assert step.status_code != STATUS_ERROR
        # Each step first asks governance, then calls the domain.
        call = _one(
            trace,
            service="orchestrator",
            kind=SPAN_KIND_CLIENT,
            parent_span_id=step.span_id,
            name=EXECUTE_RPC,
        )
        _one(
            trace,
            service="orchestrator",
            kind=SPAN_KIND_CLIENT,
            parent_span_id=step.span_id,
            name="/grace.kernels.governance.v1.GovernanceService/Evaluate",
        )
        handled = _one(trace, service=domain, kind=SPAN_KIND_SERVER, parent_span_id=call.span_id)
        assert handled.name == EXECUTE_RPC
        _one(trace, service=domain, name=f"execute {action}", parent_span_id=handled.span_id)

    # The orchestrator's group commit and the registry lookups of the create call.
    assert any(s.name == "orchestrator.commit" for s in trace)
    assert any(s.service == "registry" and s.kind == SPAN_KIND_SERVER for s in trace)
    # Events: published in this trace (PRODUCER spans on the bus, committed in a group
    # commit that is a child of one of them), and pushed to memory_domain's `ml.*` handler
    # in a delivery trace LINKED to the producer.
    producers = [s for s in trace if s.service == "eventbus" and s.kind == SPAN_KIND_PRODUCER]
    assert {"publish ml.analysis_complete", "publish data.ingested"} <= {p.name for p in producers}
    by_id = {p.span_id: p for p in producers}
    assert any(s.name == "eventbus.commit" for s in spans)
    analysis = next(p for p in producers if p.name == "publish ml.analysis_complete")
    delivery = next(
        s
        for s in spans
        if s.service == "eventbus"
        and s.kind == SPAN_KIND_CONSUMER
        and (TRACE_ID, analysis.span_id) in s.links
    )
    assert delivery.trace_id != TRACE_ID, "a delivery is its own trace, linked to the producer"
    assert delivery.name == "deliver ml.analysis_complete"
    assert analysis.span_id in by_id
    handler = _one(
        spans,
        service="memory_domain",
        name="handle ml.analysis_complete",
        trace_id=delivery.trace_id,
    )
    assert handler.status_code != STATUS_ERROR

    # The failing variant: the failing step's span (and the execution's) carry ERROR.
    failing = _in(FAILING_TRACE_ID, await receiver.wait_for(_has_step_spans(FAILING_TRACE_ID, 2)))
    broken = _one(failing, name="step analyze")
    assert broken.status_code == STATUS_ERROR
    assert broken.attributes["grace.step.action"] == "no_such_action"
    assert _one(failing, name="step ingest").status_code != STATUS_ERROR
    assert _one(failing, name="execution process_document_broken").status_code == STATUS_ERROR
