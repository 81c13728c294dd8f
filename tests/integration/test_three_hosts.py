"""Grace over three hosts, made on one machine with network namespaces, and one host lost.

Hosts A, B and C are those of three_hosts.py: PostgreSQL, NATS JetStream and the single
writers on A; an event bus on JetStream and an orchestrator on each of B and C, the
gateway on B, the example domains on both (C's first in the registry's ranking). The
seed document workflow reaches ingestion and analysis by capability.

Then every process of host C is killed at once (SIGKILL), in the middle of a burst of
executions C's orchestrator owns and of a publish load B's bus takes while a durable
consumer reads it through C's bus. The checks: C's executions are resumed by B's
orchestrator once their leases lapse and all succeed; every acknowledged publish reaches
the consumer, which resumes on B's bus after the last sequence it acknowledged; the
registry stops offering C's domains; new workflows complete on the hosts that are left.

Needs root, `ip netns`, the PostgreSQL server binaries (run as `nobody`, since PostgreSQL
refuses root) and nats-server; skipped where any is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import pytest
from google.protobuf import json_format, struct_pb2

from grace.eventbus.v1 import event_pb2, eventbus_pb2, eventbus_pb2_grpc
from grace.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.channels import channel
from services.common.pki import SERVER_NAME
from tests.integration.test_seed_workflows import DOCUMENT_WORKFLOW, _document
from tests.integration.three_hosts import (
    B_DOMAINS,
    BOOT_TIMEOUT_S,
    C_DOMAINS,
    DOMAIN_LEASE_S,
    HOSTS,
    LEASE_S,
    SUBNET,
    TAG,
    Hosts,
    Servers,
    find_servers,
    three_hosts,
)
from tests.netns import Network, private_network

pytestmark = pytest.mark.slow

T = TypeVar("T")

WORKFLOWS_BEFORE = 4
IN_FLIGHT = 16  # executions started on C's orchestrator just before C dies
WORKFLOWS_AFTER = 4
EVENT_BATCHES = 40
EVENTS_PER_BATCH = 25
LOAD_TYPE = "hosts.load"

# The seed document workflow with ingestion and analysis reached by capability, so either
# host's instance may run them; the store step names B's memory_domain.
BY_CAPABILITY = {"data_domain": "ingestion", "ai_domain": "nlp"}


def _across_hosts(workflow: dict[str, Any]) -> dict[str, Any]:
    """`workflow` with the steps of BY_CAPABILITY's domains addressed by capability."""
    changed = copy.deepcopy(workflow) | {"name": f"{workflow['name']}_across_hosts"}
    for step in changed["steps"]:
        if step.get("domain_id") in BY_CAPABILITY:
            step["capability"] = BY_CAPABILITY[step.pop("domain_id")]
    return changed


@pytest.fixture
def servers() -> Servers:
    return find_servers()


@pytest.fixture
def network(servers: Servers) -> Iterator[Network]:
    with private_network(HOSTS, SUBNET, TAG) as made:
        yield made


@pytest.fixture
async def hosts(servers: Servers, network: Network, tmp_path: Path) -> AsyncIterator[Hosts]:
    async with three_hosts(servers, network, tmp_path) as running:
        yield running


# ---- what the test does across the hosts --------------------------------------------


def _gateway(hosts: Hosts) -> httpx.AsyncClient:
    security = hosts.security()
    return httpx.AsyncClient(
        base_url=f"https://{hosts.address('b', 'gateway')}",
        timeout=60,
        verify=ssl.create_default_context(cafile=str(security.ca_file)),
        headers={"authorization": f"Bearer {security.token}"},
    )


# The certificates name `grace.local`, not the bridge addresses (as gRPC channels do).
_AS_GRACE = {"sni_hostname": SERVER_NAME}


async def _run_documents(
    http: httpx.AsyncClient, workflow_id: str, count: int, tag: str
) -> list[str]:
    """Runs the workflow `count` times to the end; returns the domains its steps reached."""
    reached: list[str] = []
    for n in range(count):
        executed = await http.post(
            f"/domains/workflows/execute/{workflow_id}",
            json={"input": _document(f"hostword{tag}{n}"), "wait": True},
            extensions=_AS_GRACE,
        )
        assert executed.status_code == 200, executed.text
        execution = executed.json()["execution"]
        assert execution["state"] == "EXECUTION_STATE_SUCCEEDED", executed.text
        reached += [step["domain_id"] for step in execution["steps"]]
    return reached


async def _wait_registered(hosts: Hosts, domain_ids: list[str]) -> None:
    async with channel(hosts.address("a", "registry")) as chan:
        stub = registry_pb2_grpc.RegistryServiceStub(chan)
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        for domain_id in domain_ids:
            while True:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await stub.GetDomain(registry_pb2.GetDomainRequest(domain_id=domain_id))
                    break
                assert time.monotonic() < deadline, f"{domain_id} never registered"
                await asyncio.sleep(0.2)


async def _offered(hosts: Hosts, capability: str) -> set[str]:
    """The domains the registry offers for a capability now."""
    async with channel(hosts.address("a", "registry")) as chan:
        found = await registry_pb2_grpc.RegistryServiceStub(chan).FindByCapability(
            registry_pb2.FindByCapabilityRequest(capability=capability)
        )
    return {ranked.domain.domain_id for ranked in found.domains}


@dataclass
class Load:
    """A publish load on one bus and a durable consumer that may move between buses."""

    acknowledged: set[str] = field(default_factory=set)
    received: list[str] = field(default_factory=list)
    acked_sequence: int = 0
    redelivered_after_ack: int = 0
    consumer_moves: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)


async def _publish(hosts: Hosts, load: Load, halfway: asyncio.Event) -> None:
    async with channel(hosts.address("b", "eventbus")) as chan:
        bus = eventbus_pb2_grpc.EventBusServiceStub(chan)
        for batch in range(EVENT_BATCHES):
            events = [
                event_pb2.Event(
                    id=f"load-{batch}-{n}", event_type=LOAD_TYPE, source_domain="hosts_test"
                )
                for n in range(EVENTS_PER_BATCH)
            ]
            published = await bus.PublishBatch(
                eventbus_pb2.PublishBatchRequest(events=events), timeout=30
            )
            for result in published.results:
                assert result.status != eventbus_pb2.PUBLISH_STATUS_REJECTED, result.error
                load.acknowledged.add(result.id)
            if batch == EVENT_BATCHES // 2:
                halfway.set()
            await asyncio.sleep(0.05)


async def _consume(hosts: Hosts, load: Load) -> None:
    """Reads `LOAD_TYPE` as a durable consumer on C's bus and acknowledges each message;
    when C's bus is gone it resumes on B's after the last sequence it acknowledged."""
    buses = [hosts.address("c", "eventbus"), hosts.address("b", "eventbus")]
    request = eventbus_pb2.SubscribeRequest(
        pattern=LOAD_TYPE, consumer="hosts_load", start=eventbus_pb2.START_POSITION_ALL
    )
    while True:
        try:
            async with channel(buses[0]) as chan:
                bus = eventbus_pb2_grpc.EventBusServiceStub(chan)
                stream = bus.Subscribe(request)
                load.ready.set()
                async for message in stream:
                    for event in message.events:
                        if event.sequence <= load.acked_sequence:
                            load.redelivered_after_ack += 1
                        load.received.append(event.id)
                    if message.events:
                        last = message.events[-1].sequence
                        await bus.Ack(
                            eventbus_pb2.AckRequest(consumer="hosts_load", sequence=last),
                            timeout=10,
                        )
                        load.acked_sequence = last
        except grpc.aio.AioRpcError:
            # Losing C shows as UNAVAILABLE or as a stream reset, depending on timing.
            if len(buses) == 1:
                raise
            buses.pop(0)
            load.consumer_moves += 1
            request = eventbus_pb2.SubscribeRequest(
                pattern=LOAD_TYPE,
                consumer="hosts_load",
                start=eventbus_pb2.START_POSITION_SEQUENCE,
                start_sequence=load.acked_sequence + 1,
            )


async def _start_in_flight(hosts: Hosts, workflow_id: str) -> list[str]:
    """Starts IN_FLIGHT executions on C's orchestrator (not waiting for them)."""
    async with channel(hosts.address("c", "orchestrator")) as chan:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(chan)

        async def start(n: int) -> str:
            data = struct_pb2.Struct()
            json_format.ParseDict(_document(f"inflightword{n}"), data)
            started = await stub.ExecuteWorkflow(
                orchestrator_pb2.ExecuteWorkflowRequest(workflow_id=workflow_id, input=data),
                timeout=30,
            )
            return started.execution_id

        return list(await asyncio.gather(*(start(n) for n in range(IN_FLIGHT))))


async def _wait_ended(
    hosts: Hosts, execution_ids: list[str]
) -> dict[str, orchestrator_pb2.Execution]:
    """Waits (through B's orchestrator) until every execution has ended; returns them."""
    ended: dict[str, orchestrator_pb2.Execution] = {}
    async with channel(hosts.address("b", "orchestrator")) as chan:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(chan)
        deadline = time.monotonic() + 60 + 4 * LEASE_S
        while len(ended) < len(execution_ids):
            for execution_id in execution_ids:
                if execution_id in ended:
                    continue
                got = await stub.GetExecution(
                    orchestrator_pb2.GetExecutionRequest(execution_id=execution_id), timeout=10
                )
                if got.execution.state != orchestrator_pb2.EXECUTION_STATE_RUNNING:
                    ended[execution_id] = got.execution
            stuck = len(execution_ids) - len(ended)
            assert time.monotonic() < deadline, f"{stuck} executions never ended"
            await asyncio.sleep(0.25)
    return ended


async def _lease_tokens(hosts: Hosts, execution_ids: list[str]) -> list[int]:
    """The fencing token of each execution's lease (above 1: another instance took it)."""
    import asyncpg

    conn = await asyncpg.connect(hosts.database_url)
    try:
        rows = await conn.fetch(
            "SELECT token FROM orchestrator_leases WHERE execution_id = ANY($1::text[])",
            execution_ids,
        )
    finally:
        await conn.close()
    return [int(row["token"]) for row in rows]


async def _until_delivered(load: Load, consumer: asyncio.Task[None]) -> None:
    """Waits until the consumer has received every acknowledged event (or failed)."""
    deadline = time.monotonic() + 60
    while not load.acknowledged <= set(load.received):
        if consumer.done():
            consumer.result()  # raises what stopped it
        assert time.monotonic() < deadline, "the consumer stopped receiving"
        await asyncio.sleep(0.1)


async def _until_unoffered(hosts: Hosts, domain_ids: set[str]) -> set[str]:
    """Waits until the registry offers none of `domain_ids` for the workflow's
    capabilities; returns those it still offers at the deadline."""
    deadline = time.monotonic() + 30 + 3 * DOMAIN_LEASE_S
    while True:
        offered: set[str] = set()
        for capability in BY_CAPABILITY.values():
            offered |= await _offered(hosts, capability)
        if not offered & domain_ids or time.monotonic() > deadline:
            return offered & domain_ids
        await asyncio.sleep(0.2)


async def _timed(coro: Awaitable[T], since: float) -> tuple[T, float]:
    """`coro`'s result and the seconds from `since` to its end."""
    result = await coro
    return result, time.monotonic() - since


async def test_work_goes_on_when_every_process_of_one_host_is_killed(hosts: Hosts) -> None:
    c_domains = set(C_DOMAINS)
    await _wait_registered(hosts, [*B_DOMAINS, *c_domains])
    async with _gateway(hosts) as http:
        created = await http.post(
            "/domains/workflows/create",
            json=_across_hosts(DOCUMENT_WORKFLOW),
            extensions=_AS_GRACE,
        )
        assert created.status_code == 200, created.text
        workflow_id = created.json()["workflow_id"]
        before = await _run_documents(http, workflow_id, WORKFLOWS_BEFORE, "before")

        load = Load()
        consumer = asyncio.create_task(_consume(hosts, load))
        await asyncio.wait_for(load.ready.wait(), 30)
        halfway = asyncio.Event()
        publisher = asyncio.create_task(_publish(hosts, load, halfway))
        try:
            await asyncio.wait_for(halfway.wait(), 60)
            in_flight = await _start_in_flight(hosts, workflow_id)
            killed = hosts.network.kill_all("c")
            killed_at = time.monotonic()
            assert killed, "host C ran nothing"
            (executions, ended_s), (still_offered, unoffered_s), _ = await asyncio.gather(
                _timed(_wait_ended(hosts, in_flight), killed_at),
                _timed(_until_unoffered(hosts, c_domains), killed_at),
                publisher,
            )
            await _until_delivered(load, consumer)
        finally:
            for task in (consumer, publisher):
                task.cancel()
            await asyncio.gather(consumer, publisher, return_exceptions=True)
        tokens = await _lease_tokens(hosts, in_flight)
        after = await _run_documents(http, workflow_id, WORKFLOWS_AFTER, "after")

    states = {e.execution_id: e.state for e in executions.values()}
    succeeded = sum(s == orchestrator_pb2.EXECUTION_STATE_SUCCEEDED for s in states.values())
    resumed_on = {step.domain_id for e in executions.values() for step in e.steps}
    resumed = sum(token > 1 for token in tokens)
    lost = load.acknowledged - set(load.received)
    print(
        f"\nthree hosts: {WORKFLOWS_BEFORE} document workflows before the kill, steps on "
        f"{sorted(set(before))}; killed {len(killed)} processes of host C; "
        f"{succeeded}/{IN_FLIGHT} of C's executions succeeded, {resumed} resumed by B, all "
        f"ended {ended_s:.1f}s after the kill (lease {LEASE_S:g}s), steps on "
        f"{sorted(resumed_on)}; "
        f"{len(load.acknowledged)} events acknowledged, {len(lost)} lost, "
        f"{len(load.received) - len(set(load.received))} delivered twice "
        f"({load.redelivered_after_ack} after their ack), the consumer moved "
        f"{load.consumer_moves}x; C's domains no longer offered {unoffered_s:.1f}s after the "
        f"kill (lease {DOMAIN_LEASE_S:g}s); {WORKFLOWS_AFTER} workflows after it, steps on "
        f"{sorted(set(after))}"
    )
    assert succeeded == IN_FLIGHT, states
    assert len(tokens) == IN_FLIGHT
    assert resumed >= 1, "every execution had ended before host C died"
    assert len(load.acknowledged) == EVENT_BATCHES * EVENTS_PER_BATCH
    assert lost == set()
    assert load.redelivered_after_ack == 0
    assert load.consumer_moves == 1
    assert still_offered == set()
    assert set(before) & c_domains, "no step reached C's domains before the kill"
    assert not set(after) & c_domains
    assert set(after) >= set(B_DOMAINS)
