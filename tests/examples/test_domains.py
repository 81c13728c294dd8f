"""The example domains over gRPC with a real registry, bus and memory: every action and
compensation, the seeds' document flow by hand, and the ml.* journal."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from examples import ai_domain, data_domain, memory_domain
from grace.domain.v1 import domain_pb2, domain_pb2_grpc
from grace.memory.v1 import memory_pb2, memory_pb2_grpc
from services.common.channels import channel
from tests.sdk.conftest import domain_config
from tests.sdk.platform import Platform, running_platform
from tests.support import eventually

DOCUMENT = (
    "Grace keeps services healthy. The registry tracks every domain and the event bus "
    "delivers events reliably. Restarting a failed domain is fast and safe."
)


def struct(values: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


class Domains:
    """Stubs of the three running example domains."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.stubs: dict[str, domain_pb2_grpc.DomainServiceStub] = {}
        self.running: dict[str, Any] = {}

    async def execute(self, domain: str, action: str, data: dict[str, Any], key: str = "") -> Any:
        response = await self.stubs[domain].Execute(
            domain_pb2.ExecuteRequest(
                domain_id=domain,
                action=action,
                input=struct(data),
                workflow_id="wf_test",
                execution_id="ex_test",
                step_id=f"{domain}-{action}",
                attempt=1,
                idempotency_key=key,
            )
        )
        return json_format.MessageToDict(response.output)

    async def compensate(
        self,
        domain: str,
        action: str,
        data: dict[str, Any],
        output: dict[str, Any],
        key: str = "",
    ) -> Any:
        response = await self.stubs[domain].Compensate(
            domain_pb2.CompensateRequest(
                domain_id=domain,
                action=action,
                input=struct(data),
                output=struct(output),
                execution_id="ex_test",
                idempotency_key=key or f"ex_test/{domain}/compensate",
            )
        )
        return json_format.MessageToDict(response.output)


@asynccontextmanager
async def example_domains(tmp_path: Path) -> AsyncIterator[Domains]:
    async with AsyncExitStack() as stack:
        platform = await stack.enter_async_context(running_platform(tmp_path))
        domains = Domains(platform)
        for module in (data_domain, ai_domain, memory_domain):
            domain = module.domain
            config = dataclasses.replace(
                domain_config(tmp_path / domain.domain_id, domain.domain_id),
                registry_addr=platform.registry,
                eventbus_addr=platform.eventbus,
                memory_addr=platform.memory,
            )
            running = await stack.enter_async_context(domain.serve(config))
            chan = await stack.enter_async_context(channel(running.address))
            domains.stubs[domain.domain_id] = domain_pb2_grpc.DomainServiceStub(chan)
            domains.running[domain.domain_id] = running
        yield domains


async def test_the_document_flow_ingests_analyzes_and_stores(tmp_path: Path) -> None:
    async with example_domains(tmp_path) as domains:
        workflow_input = {"document": {"title": "Grace", "text": DOCUMENT}}
        ingested = await domains.execute("data_domain", "ingest", workflow_input, "ex/step_1")
        assert ingested["document_id"].startswith("doc_")
        assert ingested["statistics"]["words"] == 24
        # The orchestrator hands a step without data the inputs and outputs before it.
        analysis = await domains.execute(
            "ai_domain", "analyze", {**workflow_input, **ingested}, "ex/step_2"
        )
        assert analysis["keywords"][0] == {"word": "domain", "count": 2}
        assert analysis["sentiment"]["label"] == "positive"
        assert analysis["summary"] in DOCUMENT
        assert analysis["document_id"] == ingested["document_id"]
        assert analysis["memory_consulted"] is True
        stored = await domains.execute(
            "memory_domain", "store", {**workflow_input, **ingested, **analysis}, "ex/step_3"
        )
        memory = memory_pb2_grpc.SharedMemoryServiceStub(domains.platform.memory_channel)
        got = await memory.GetContribution(
            memory_pb2.GetContributionRequest(contribution_id=stored["contribution_id"])
        )
        assert got.contribution.domain_id == "memory_domain"
        assert got.contribution.content["document_id"] == ingested["document_id"]
        assert list(got.contribution.tags) == ["analysis", "positive"]

        # The next analysis of related text finds it, and so does search_similar.
        again = await domains.execute("ai_domain", "analyze", {"text": "Grace restarts domains."})
        assert [k["id"] for k in again["related_knowledge"]] == [stored["contribution_id"]]
        similar = await domains.execute("memory_domain", "search_similar", {"code": DOCUMENT})
        assert [r["id"] for r in similar["results"]] == [stored["contribution_id"]]
        assert similar["query"] == "domain"


async def test_seed_001_action_names_run_the_document_flow_with_metadata(tmp_path: Path) -> None:
    async with example_domains(tmp_path) as domains:
        # The gateway wraps seed 001's `"data": document` as {"value": document}.
        workflow_input = {"value": DOCUMENT}
        ingested = await domains.execute(
            "data_domain", "ingest_document", workflow_input, "ex/step_1"
        )
        assert ingested["text"] == DOCUMENT
        analysis = await domains.execute(
            "ai_domain", "analyze_content", {**workflow_input, **ingested}, "ex/step_2"
        )
        assert analysis["source"] == "input"
        assert analysis["document_id"] == ingested["document_id"]
        stored = await domains.execute(
            "memory_domain",
            "store_with_metadata",
            {**workflow_input, **ingested, **analysis},
            "ex/step_3",
        )
        assert stored["metadata"]["document_id"] == ingested["document_id"]
        assert stored["metadata"]["statistics"] == analysis["statistics"]
        memory = memory_pb2_grpc.SharedMemoryServiceStub(domains.platform.memory_channel)
        got = await memory.GetContribution(
            memory_pb2.GetContributionRequest(contribution_id=stored["contribution_id"])
        )
        assert got.contribution.content["metadata"]["execution_id"] == "ex_test"
        # Its compensation retracts it, like store's.
        undone = await domains.compensate(
            "memory_domain", "store_with_metadata", {}, stored, "ex/step_3/compensate"
        )
        assert undone["retracted"] is True


async def test_analyze_without_text_analyses_the_search_results_it_was_given(
    tmp_path: Path,
) -> None:
    async with example_domains(tmp_path) as domains:
        found = {"query": "cache", "results": [{"content": {"summary": "Caching is fast."}}]}
        analysis = await domains.execute("ai_domain", "analyze", found)
        assert analysis["source"] == "results"
        assert analysis["context_results"] == 1
        assert analysis["keywords"][0]["word"] == "caching"
        empty = await domains.execute("ai_domain", "analyze", {"query": "", "results": []})
        assert (empty["source"], empty["keywords"], empty["summary"]) == ("results", [], "")


async def test_compensations_undo_ingest_and_retract_the_stored_analysis(tmp_path: Path) -> None:
    async with example_domains(tmp_path) as domains:
        data = {"document": DOCUMENT}
        ingested = await domains.execute("data_domain", "ingest", data, "ex/step_1")
        fetched = await domains.execute("data_domain", "get", ingested)
        assert fetched["text"] == DOCUMENT
        undone = await domains.compensate("data_domain", "ingest", data, ingested)
        assert undone == {"document_id": ingested["document_id"], "deleted": True}
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await domains.execute("data_domain", "get", ingested)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND

        analysis = await domains.execute("ai_domain", "analyze", data)
        stored = await domains.execute("memory_domain", "store", analysis, "ex/step_3")
        query = memory_pb2.QueryRequest(query="domain", domain_id="memory_domain")
        memory = memory_pb2_grpc.SharedMemoryServiceStub(domains.platform.memory_channel)
        assert [r.contribution.contribution_id for r in (await memory.Query(query)).results] == [
            stored["contribution_id"]
        ]
        retracted = await domains.compensate("memory_domain", "store", analysis, stored)
        assert retracted == {
            "contribution_id": stored["contribution_id"],
            "retracted": True,
            "found": True,
        }
        nothing = await domains.compensate("ai_domain", "analyze", data, analysis)
        assert nothing["compensated"] is False

        # The knowledge is gone from every query; the memory keeps it, flagged, for audit.
        assert list((await memory.Query(query)).results) == []
        similar = await domains.execute("memory_domain", "search_similar", {"query": "domain"})
        assert similar["results"] == []
        got = await memory.GetContribution(
            memory_pb2.GetContributionRequest(contribution_id=stored["contribution_id"])
        )
        assert got.contribution.retracted
        assert "ex_test" in got.contribution.retraction_reason


async def test_the_store_compensation_is_idempotent_under_retries(tmp_path: Path) -> None:
    async with example_domains(tmp_path) as domains:
        analysis = await domains.execute("ai_domain", "analyze", {"text": DOCUMENT})
        stored = await domains.execute("memory_domain", "store", analysis, "ex/step_3")
        key = "ex/step_3/compensate"

        first = await domains.compensate("memory_domain", "store", analysis, stored, key)
        replayed = await domains.compensate("memory_domain", "store", analysis, stored, key)
        # A retry whose first result was never stored (a crash) runs the retraction again.
        rerun = await domains.compensate("memory_domain", "store", analysis, stored, key + "/2")
        unknown = await domains.compensate(
            "memory_domain",
            "store",
            analysis,
            {"contribution_id": "00000000-0000-0000-0000-000000000000"},
        )

        memory = memory_pb2_grpc.SharedMemoryServiceStub(domains.platform.memory_channel)
        stats = await memory.GetStats(memory_pb2.GetStatsRequest())
    assert first == replayed == rerun
    assert first["retracted"] is True
    assert unknown["found"] is False
    assert (stats.total_contributions, stats.retracted_contributions) == (0, 1)


async def test_an_ingest_step_run_twice_stores_one_document(tmp_path: Path) -> None:
    async with example_domains(tmp_path) as domains:
        first = await domains.execute("data_domain", "ingest", {"text": DOCUMENT}, "ex/step_1")
        second = await domains.execute("data_domain", "ingest", {"text": DOCUMENT}, "ex/step_1")
        service = domains.running["data_domain"].service
        assert first == second
        assert await service.store.count(data_domain.DOCUMENTS) == 1


async def test_bad_input_is_invalid_argument_naming_the_field(tmp_path: Path) -> None:
    async with example_domains(tmp_path) as domains:
        for domain, action, field in [
            ("data_domain", "ingest", "input.document"),
            ("ai_domain", "analyze", "input.text"),
            ("memory_domain", "store", "input.summary"),
            ("data_domain", "get", "input.document_id"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await domains.execute(domain, action, {})
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (bad.value.details() or "").startswith(field)


async def test_memory_domain_journals_the_ml_events_it_receives(tmp_path: Path) -> None:
    async with example_domains(tmp_path) as domains:
        await eventually(
            lambda: domains.running["memory_domain"].service.subscriptions.created.is_set(),
            every_s=0.05,
        )
        await eventually(
            lambda: domains.running["memory_domain"].service.registrar.registered.is_set(),
            every_s=0.05,
        )
        await domains.execute("ai_domain", "analyze", {"text": DOCUMENT}, "ex/step_2")

        async def journaled() -> list[Any]:
            events = await domains.execute("memory_domain", "recent_events", {})
            return list(events["events"])

        await eventually(journaled, every_s=0.05)
        entry = (await journaled())[0]
    assert entry["event_type"] == "ml.analysis_complete"
    assert entry["source_domain"] == "ai_domain"
    assert entry["data"]["sentiment"] == "positive"


@pytest.mark.slow
def test_an_example_domain_runs_as_a_module_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "GRACE_DATA_DIR": str(tmp_path),
        "GRACE_REGISTRY_ADDR": "off",
        "GRACE_EVENTBUS_ADDR": "off",
        "GRACE_MEMORY_ADDR": "off",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "examples.data_domain", "--port", "0"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = None
        assert process.stderr is not None
        for line in process.stderr:
            if "serving on" in line:
                port = int(line.rsplit(":", 1)[1])
                break
        assert port is not None

        async def check() -> int:
            async with channel(f"127.0.0.1:{port}") as chan:
                response = await health_pb2_grpc.HealthStub(chan).Check(
                    health_pb2.HealthCheckRequest()
                )
                return int(response.status)

        import asyncio

        assert asyncio.run(check()) == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
