"""Memory the orchestrator keeps per cached ended execution (and what a read of one costs).

Starts a registry, three domains that answer like the example domains in the soak's
document workflow (`data_domain.ingest`, `ai_domain.analyze`, `memory_domain.store`,
their outputs built with `examples.text`) and the orchestrator in this process, runs
`--executions` three-step workflows to the end through the core, and then measures with
tracemalloc the bytes its cache of ended executions holds: the traced heap with the cache
full minus the traced heap once the cache is emptied, per execution. Also the CPU time of
a read (`get_execution`) of a cached execution and of one read from the store. Bytes and
CPU time, not wall time: the figures hardly depend on the machine's load.

    .venv/bin/python benchmarks/orchestrator_cache.py --executions 300

Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import tempfile
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path
from typing import Any

from _harness import DomainHost, server_config

from examples.text import keywords, sentiment, statistics, summary, text_of
from grace.domain.v1 import domain_pb2, domain_pb2_grpc
from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.channels import channel
from services.common.domain_router import from_struct, to_struct
from services.common.server import GraceServer
from services.orchestrator.config import OrchestratorConfig
from services.orchestrator.definition import StepDraft
from services.orchestrator.engine import Orchestrator, OrchestratorSettings
from services.orchestrator.server import OrchestratorServer
from services.registry.config import RegistryConfig
from services.registry.registry import RegistrySettings
from services.registry.server import RegistryServer


def _analysis(text: str) -> dict[str, Any]:
    top = keywords(text)
    return {
        "source": "input",
        "keywords": top,
        "summary": summary(text),
        "sentiment": sentiment(text),
        "statistics": statistics(text),
        # As the soak's memory answers once it holds earlier runs' insights.
        "related_knowledge": [
            {
                "id": f"k_{i:024x}",
                "domain_id": "memory_domain",
                "type": "insight",
                "confidence": 0.6,
                "matched": top[0]["word"] if top else "",
            }
            for i in range(5)
        ],
        "memory_consulted": True,
        "context_results": 0,
    }


class ExampleLikeDomain(domain_pb2_grpc.DomainServiceServicer):
    """Answers ingest, analyze and store with outputs shaped like the example domains'."""

    def __init__(self) -> None:
        self.count = 0

    async def Execute(self, request: Any, context: Any) -> domain_pb2.ExecuteResponse:
        data = from_struct(request.input)
        self.count += 1
        text = text_of(data)
        if request.action == "ingest":
            document = data.get("document") or {}
            output: dict[str, Any] = {
                "document_id": f"doc_{self.count:020x}",
                "title": str(document.get("title", "")),
                "text": text,
                "statistics": statistics(text),
            }
        elif request.action == "analyze":
            output = {**_analysis(text), "document_id": data.get("document_id", "")}
        else:
            output = {"contribution_id": f"c_{self.count:024x}", "confidence": 0.6}
        return domain_pb2.ExecuteResponse(output=to_struct(output))


DOMAINS = ("data_domain", "ai_domain", "memory_domain")
STEPS = [
    StepDraft(id="ingest", domain_id="data_domain", action="ingest"),
    StepDraft(id="analyze", domain_id="ai_domain", action="analyze", depends_on=("ingest",)),
    StepDraft(id="store", domain_id="memory_domain", action="store", depends_on=("analyze",)),
]


def cache_of(core: Orchestrator) -> Any:
    """The core's cache of ended executions (private: this measures it)."""
    return core._recent


async def run(core: Orchestrator, workflow_id: str, executions: int) -> list[str]:
    ids = []
    for n in range(executions):
        document = {"document": {"title": f"soak {n}", "text": f"Run {n} went well. " * 8}}
        ex = await core.execute(workflow_id, document, wait=True)
        assert ex.state.value == "SUCCEEDED", ex.error
        ids.append(ex.execution_id)
    return ids


async def read_cpu_us(core: Orchestrator, ids: list[str], reads: int = 2000) -> float:
    started = time.process_time()
    for i in range(reads):
        await core.get_execution(ids[i % len(ids)])
    return round((time.process_time() - started) / reads * 1e6, 1)


async def measure(core: Orchestrator, executions: int) -> dict[str, Any]:
    spec, _ = await core.create_workflow("soak_document", "", STEPS)
    await run(core, spec.workflow_id, 20)  # warm-up: routes resolved, statements prepared
    cache_of(core).clear()
    gc.collect()
    tracemalloc.start()
    await run(core, spec.workflow_id, executions)
    await asyncio.sleep(0.1)  # the outbox and the writer settle
    gc.collect()
    full = tracemalloc.take_snapshot()
    cached = len(cache_of(core))
    cache_of(core).clear()
    gc.collect()
    empty = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(s.size_diff for s in full.compare_to(empty, "filename"))
    top = [
        f"{s.size_diff / cached:+8.0f} B/execution  "
        f"{s.traceback[0].filename.rsplit('/', 3)[-1]}:{s.traceback[0].lineno}"
        for s in full.compare_to(empty, "lineno")[:6]
    ]
    # CPU time of reads (not traced: tracing slows every allocation down).
    ids = await run(core, spec.workflow_id, 200)
    cached_read = await read_cpu_us(core, ids)
    cache_of(core).clear()
    store_read = await read_cpu_us(core, ids, reads=500)
    return {
        "executions_cached": cached,
        "bytes_per_cached_execution": round(held / cached),
        "read_cpu_us_cached": cached_read,
        "read_cpu_us_from_store": store_read,
        "top_lines": top,
    }


async def main(executions: int) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="grace-bench-"))
    registry = RegistryServer(
        RegistryConfig(
            server=replace(
                server_config("registry", data), env={"GRACE_EVENTBUS_ADDR": "127.0.0.1:9"}
            ),
            settings=RegistrySettings(default_lease_ttl_s=3600, deregister_after_s=3600),
        )
    )
    async with GraceServer(registry.config.server, registry) as reg_server:
        domains = [
            GraceServer(server_config(name, data), DomainHost(ExampleLikeDomain()))
            for name in DOMAINS
        ]
        for server in domains:
            await server.start()
        async with channel(reg_server.address) as reg_chan:
            reg = registry_pb2_grpc.RegistryServiceStub(reg_chan)
            for name, server in zip(DOMAINS, domains, strict=True):
                await reg.RegisterDomain(
                    registry_pb2.RegisterDomainRequest(
                        domain_id=name, host="127.0.0.1", port=server.port
                    )
                )
        orch = OrchestratorServer(
            OrchestratorConfig(
                server=server_config("orchestrator", data),
                settings=OrchestratorSettings(recent_cache=max(1000, executions)),
                registry_address=reg_server.address,
                key_file=data / "orchestrator.key",
                route_cache_s=3600,
            )
        )
        async with GraceServer(orch.config.server, orch):
            assert orch.core is not None
            results = await measure(orch.core, executions)
        for server in domains:
            await server.stop(0.2)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executions", type=int, default=300)
    results = asyncio.run(main(parser.parse_args().executions))
    for line in results.pop("top_lines"):
        print(line)
    print(json.dumps({"benchmark": "orchestrator_cache", **results}, sort_keys=True))
