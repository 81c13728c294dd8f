"""The orchestrator core's cache of ended executions: compact, bounded, read as copies."""

from __future__ import annotations

import dataclasses
import gc
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest

from grace.orchestrator.v1 import orchestrator_pb2 as pb
from grace.orchestrator.v1 import orchestrator_pb2_grpc
from services.orchestrator.definition import StepDraft
from services.orchestrator.engine import Orchestrator
from services.orchestrator.recent import EndedExecutions
from services.orchestrator.server import OrchestratorServer
from tests.conftest import DatabaseTarget
from tests.orchestrator.conftest import World, orchestrator_config
from tests.orchestrator.test_model import Label, ended_execution
from tests.orchestrator.test_workflows import run
from tests.support import serving

Stub = orchestrator_pb2_grpc.OrchestratorServiceStub
Start = Callable[..., Awaitable[tuple[Orchestrator, Stub]]]

# The soak's document workflow: three steps in a chain, each one's input merging the
# workflow input with the previous step's input and output.
CHAIN = {
    "name": "document",
    "steps": [
        {"id": "ingest", "domain_id": "d", "action": "ingest"},
        {"id": "analyze", "domain_id": "d", "action": "analyze", "depends_on": ["ingest"]},
        {"id": "store", "domain_id": "d", "action": "store", "depends_on": ["analyze"]},
    ],
}


def document(n: int) -> dict[str, Any]:
    return {"document": {"title": f"soak {n}", "text": f"Run {n} went well. " * 8}}


@pytest.fixture
async def start_core(world: World) -> AsyncIterator[Start]:
    """Starts the orchestrator with chosen settings (on SQLite, or on `database`); gives
    its core and a stub."""
    async with AsyncExitStack() as stack:

        async def start(
            database: DatabaseTarget | None = None, **settings: Any
        ) -> tuple[Orchestrator, Stub]:
            config = orchestrator_config(world.tmp_path / "orch", world.registry_address)
            config = dataclasses.replace(
                config,
                server=dataclasses.replace(
                    config.server,
                    database_url=database.url if database else config.server.database_url,
                ),
                settings=dataclasses.replace(config.settings, **settings),
            )
            service = OrchestratorServer(config, schema=database.schema if database else None)
            _, chan = await stack.enter_async_context(serving(config.server, service))
            assert service.core is not None
            return service.core, Stub(chan)

        yield start


# -- the cache itself ------------------------------------------------------------------


def test_the_cache_keeps_bytes_and_reads_back_an_equal_copy_each_time() -> None:
    cache = EndedExecutions(max_count=10, max_bytes=1 << 20)
    execution = ended_execution()
    cache.put(execution)
    assert execution.execution_id in cache
    assert 0 < cache.nbytes < 2000
    first = cache.get(execution.execution_id)
    assert first == execution
    assert first is not execution
    assert first is not None
    first.error = "changed by a reader"
    first.steps["ingest"].output = None
    assert cache.get(execution.execution_id) == execution
    assert cache.get("ex_unknown") is None


def test_the_oldest_ended_go_first_past_the_count() -> None:
    cache = EndedExecutions(max_count=2, max_bytes=1 << 20)
    for n in range(3):
        cache.put(ended_execution(n=n))
    assert [ended_execution(n=n).execution_id in cache for n in range(3)] == [False, True, True]
    assert cache.nbytes == sum(len(ended_execution(n=n).to_compact()) for n in (1, 2))


def test_the_oldest_ended_go_first_past_the_bytes() -> None:
    size = len(ended_execution(n=0).to_compact())
    cache = EndedExecutions(max_count=100, max_bytes=size * 2 + size // 2)
    for n in range(4):
        cache.put(ended_execution(n=n))
    assert len(cache) == 2
    assert ended_execution(n=3).execution_id in cache
    assert ended_execution(n=2).execution_id in cache
    assert cache.nbytes <= cache.max_bytes
    cache.pop(ended_execution(n=3).execution_id)
    cache.pop(ended_execution(n=3).execution_id)  # not kept any more: nothing happens
    assert len(cache) == 1
    assert cache.nbytes == len(ended_execution(n=2).to_compact())


def test_a_changed_execution_replaces_its_copy_and_one_too_large_drops_it() -> None:
    execution = ended_execution()
    cache = EndedExecutions(max_count=10, max_bytes=len(execution.to_compact()) + 100)
    cache.put(execution)
    cache.put(ended_execution(n=2))  # pushes the first out: the two do not fit
    cache.put(execution)
    execution.abandoned_by = "alice"
    cache.put(execution)
    assert cache.get(execution.execution_id) == execution
    assert len(cache) == 1
    execution.input = {"text": "".join(chr(0x4E00 + i) for i in range(2000))}
    cache.put(execution)  # larger than the whole bound: neither it nor the old copy stays
    assert len(cache) == 0
    assert cache.nbytes == 0


def test_an_execution_marshal_cannot_write_is_not_kept_and_raises_nothing() -> None:
    cache = EndedExecutions(max_count=10, max_bytes=1 << 20)
    execution = ended_execution()
    cache.put(execution)
    execution.input = {"risk": Label.HIGH}
    cache.put(execution)
    assert len(cache) == 0


# -- the core ------------------------------------------------------------------------------


async def test_a_cached_ended_execution_holds_a_few_kilobytes(
    world: World, start_core: Start
) -> None:
    await world.add_domain("d")
    core, _ = await start_core()
    drafts = [  # CHAIN, as the core takes it
        StepDraft(action="ingest", id="ingest", domain_id="d"),
        StepDraft(action="analyze", id="analyze", domain_id="d", depends_on=("ingest",)),
        StepDraft(action="store", id="store", domain_id="d", depends_on=("analyze",)),
    ]
    spec, _ = await core.create_workflow("document", "", drafts)
    await core.execute(spec.workflow_id, document(0), wait=True)  # routes, statements
    count = 40
    tracemalloc.start()
    try:
        for n in range(count):
            await core.execute(spec.workflow_id, document(n), wait=True)
        gc.collect()
        full = tracemalloc.take_snapshot()
        assert len(core._recent) == count + 1
        core._recent.clear()
        gc.collect()
        empty = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    held = sum(stat.size_diff for stat in full.compare_to(empty, "filename"))
    # As objects (step inputs and outputs, proof records) it held about 11 kB.
    assert held / count < 4000, f"{held / count:.0f} bytes per cached execution"


async def test_every_read_of_a_cached_execution_is_a_copy_of_its_own(
    world: World, start_core: Start
) -> None:
    await world.add_domain("d")
    core, stub = await start_core()
    ended = await run(stub, CHAIN, document(1))
    read = await core.get_execution(ended.execution_id)
    read.error = "changed by a reader"
    read.records.clear()
    again = await core.get_execution(ended.execution_id)
    assert again.error == ""
    assert len(again.records) == 3


async def test_an_execution_dropped_from_the_cache_reads_as_it_did_while_cached(
    world: World, start_core: Start
) -> None:
    await world.add_domain("d")
    _, stub = await start_core(recent_cache=1)
    first = await run(stub, CHAIN, document(1))
    get = pb.GetExecutionRequest(execution_id=first.execution_id)
    ask_proof = pb.GetExecutionProofRequest(execution_id=first.execution_id)
    cached = (await stub.GetExecution(get)).execution
    cached_proof = (await stub.GetExecutionProof(ask_proof)).proof
    assert cached == first
    second = await run(stub, CHAIN, document(2))  # the cache holds one: the first goes
    assert (await stub.GetExecution(get)).execution == cached
    stored_proof = (await stub.GetExecutionProof(ask_proof)).proof
    # The attestation of the orchestrator's certificate key is signed anew each time.
    for signed in (stored_proof, cached_proof):
        signed.ClearField("certificate_signature")
    assert stored_proof == cached_proof
    assert (await stub.VerifyProof(pb.VerifyProofRequest(proof=stored_proof))).valid
    got = await stub.GetExecution(pb.GetExecutionRequest(execution_id=second.execution_id))
    assert got.execution == second


async def test_ended_executions_are_cached_only_where_one_instance_owns_the_database(
    world: World, start_core: Start, database: DatabaseTarget
) -> None:
    await world.add_domain("d")
    core, stub = await start_core(database)
    ended = await run(stub, CHAIN, document(1))
    # With leases (PostgreSQL) another instance may change an ended execution (a new round
    # of compensation, an abandon): reads go to the store, and a cached copy would be waste.
    assert len(core._recent) == (1 if database.backend == "sqlite" else 0)
    got = await stub.GetExecution(pb.GetExecutionRequest(execution_id=ended.execution_id))
    assert got.execution == ended
