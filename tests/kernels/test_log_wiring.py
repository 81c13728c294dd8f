"""The immutable log records the platform's decisions: a real registry, event bus, log and
orchestrator (with a fake domain) in-process; the orchestrator's signed execution proofs
and Guardian's healing decisions reach the log through its bus push subscriptions."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from grace.domain.v1 import domain_pb2
from grace.kernels.immutable_log.v1 import immutable_log_pb2 as pb
from grace.kernels.immutable_log.v1 import immutable_log_pb2_grpc as pb_grpc
from grace.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from services.common import signing
from services.common.bus_client import EventBusPublisher
from services.common.outbox import OutboxEvent
from services.eventbus.server import EventBusServer
from services.kernels.immutable_log import audit
from services.kernels.immutable_log.config import CAPABILITIES, LogConfig
from services.kernels.immutable_log.log import LogSettings
from services.kernels.immutable_log.server import ImmutableLogServer
from services.kernels.registration import DomainRegistration
from services.orchestrator import proof
from services.orchestrator.server import OrchestratorServer
from tests.eventbus.conftest import bus_config
from tests.orchestrator.conftest import GrpcFailure, World, orchestrator_config
from tests.orchestrator.test_workflows import run
from tests.support import eventually, free_port, server_config, serving

ORIGIN = "test.example/log"


@dataclass
class Platform:
    """The running log and the addresses of its peers."""

    world: World
    log: ImmutableLogServer
    log_stub: pb_grpc.ImmutableLogServiceStub
    bus_address: str


@pytest.fixture
async def platform(world: World, tmp_path: Path) -> AsyncIterator[Platform]:
    """Bus (pushing through the world's registry) and the log, registered and subscribed."""
    async with AsyncExitStack() as stack:
        bus = EventBusServer(bus_config(tmp_path / "bus", world.registry_address))
        bus_server, _ = await stack.enter_async_context(serving(bus.config.server, bus))
        service = ImmutableLogServer(
            LogConfig(
                server=server_config("immutable_log", tmp_path / "log"),
                settings=LogSettings(origin=ORIGIN),
                key_file=tmp_path / "log" / "immutable_log.key",
                registration=DomainRegistration(
                    world.registry_address, "immutable_log", "127.0.0.1", CAPABILITIES
                ),
                eventbus_address=bus_server.address,
            )
        )
        _, log_chan = await stack.enter_async_context(serving(service.config.server, service))
        assert service.subscriptions is not None
        await asyncio.wait_for(service.subscriptions.created.wait(), 20)
        yield Platform(
            world, service, pb_grpc.ImmutableLogServiceStub(log_chan), bus_server.address
        )


async def entries(stub: pb_grpc.ImmutableLogServiceStub) -> list[pb.Entry]:
    response = await stub.GetEntries(pb.GetEntriesRequest(start=0, page_size=1000))
    return list(response.entries)


async def entry_of_kind(stub: pb_grpc.ImmutableLogServiceStub, kind: str) -> pb.Entry:
    found: list[pb.Entry] = []

    async def landed() -> bool:
        found[:] = [e for e in await entries(stub) if e.data.kind == kind]
        return bool(found)

    await eventually(landed, every_s=0.05)
    return found[0]


def recorded(entry: pb.Entry) -> dict[str, Any]:
    return json_format.MessageToDict(entry.data.data)


async def test_an_execution_proof_head_lands_in_the_log_and_its_inclusion_verifies_offline(
    platform: Platform, tmp_path: Path
) -> None:
    world = platform.world
    await world.add_domain("d")
    orchestrator = OrchestratorServer(
        orchestrator_config(tmp_path / "orch", world.registry_address),
        publisher=EventBusPublisher(platform.bus_address),
    )
    async with serving(orchestrator.config.server, orchestrator) as (_, chan):
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(chan)
        ex = await run(stub, {"name": "anchored", "steps": [{"domain_id": "d", "action": "a"}]})
        assert ex.state == orchestrator_pb2.EXECUTION_STATE_SUCCEEDED
        signed = (
            await stub.GetExecutionProof(
                orchestrator_pb2.GetExecutionProofRequest(execution_id=ex.execution_id)
            )
        ).proof
        entry = await entry_of_kind(platform.log_stub, "workflow.completed")

    assert entry.data.actor == "orchestrator"
    anchor = recorded(entry)["data"]
    assert anchor["execution_id"] == ex.execution_id
    assert anchor["proof_head"] == signed.head_hash
    assert anchor["proof_key_id"] == signed.key_id
    assert base64.b64decode(anchor["proof_signature"]) == signed.signature
    # The entry alone lets anyone check the head was signed by the orchestrator's key.
    message = proof.signing_message(
        ex.execution_id,
        anchor["workflow_id"],
        anchor["final_state"],
        int(anchor["proof_records"]),
        anchor["proof_head"],
    )
    assert signing.verify(signed.public_key, message, signed.signature)
    # And that the entry is in the log, with the log's public key only.
    inclusion = await platform.log_stub.GetInclusionProof(
        pb.GetInclusionProofRequest(index=entry.index)
    )
    head = audit.check_inclusion(inclusion, ORIGIN, platform.log.log.public_key)
    assert head.size >= entry.index + 1
    forged = pb.GetInclusionProofResponse()
    forged.CopyFrom(inclusion)
    forged.entry.leaf_data = forged.entry.leaf_data.replace(
        signed.head_hash.encode(), signed.head_hash[::-1].encode()
    )
    forged.entry.leaf_hash = b""
    with pytest.raises(audit.AuditError):
        audit.check_inclusion(forged, ORIGIN, platform.log.log.public_key)


async def test_a_rolled_back_execution_is_anchored_with_its_final_state(
    platform: Platform, tmp_path: Path
) -> None:
    world = platform.world
    domain = await world.add_domain("d")

    async def refuse(request: domain_pb2.ExecuteRequest) -> dict[str, Any]:
        raise GrpcFailure(grpc.StatusCode.INVALID_ARGUMENT, "no")

    domain.actions["b"] = refuse
    orchestrator = OrchestratorServer(
        orchestrator_config(tmp_path / "orch", world.registry_address),
        publisher=EventBusPublisher(platform.bus_address),
    )
    async with serving(orchestrator.config.server, orchestrator) as (_, chan):
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(chan)
        # The second step fails for good: the first is compensated, the execution rolls back.
        body = {
            "name": "doomed",
            "steps": [
                {"domain_id": "d", "action": "a"},
                {"domain_id": "d", "action": "b", "depends_on": ["step_1"]},
            ],
        }
        ex = await run(stub, body)
        assert ex.state == orchestrator_pb2.EXECUTION_STATE_ROLLED_BACK
        entry = await entry_of_kind(platform.log_stub, "workflow.rolled_back")
    anchor = recorded(entry)["data"]
    assert anchor["execution_id"] == ex.execution_id
    assert anchor["final_state"] == "ROLLED_BACK"
    assert len(anchor["proof_head"]) == 64


async def test_a_guardian_healing_decision_lands_in_the_log_once(platform: Platform) -> None:
    publisher = EventBusPublisher(platform.bus_address)
    decision = OutboxEvent(
        row_id=1,
        event_id="guardian-decision-1",
        event_type="healing.started",
        source_domain="guardian",
        subject="registry",
        data={"component": "registry", "action": "restart", "reason": "probe failed"},
        traceparent="",
        created_at=1_800_000_000.0,
    )
    try:
        await publisher.publish([decision])
        entry = await entry_of_kind(platform.log_stub, "healing.started")
        await publisher.publish([decision])  # a relay re-send after a crash
    finally:
        await publisher.close()
    assert entry.data.actor == "guardian"
    assert recorded(entry)["data"]["component"] == "registry"
    assert recorded(entry)["event_id"] == "guardian-decision-1"
    await asyncio.sleep(0.5)
    kinds = [e.data.kind for e in await entries(platform.log_stub)]
    assert kinds.count("healing.started") == 1


async def test_the_log_subscribes_once_the_bus_comes_up(world: World, tmp_path: Path) -> None:
    bus_port = free_port()
    service = ImmutableLogServer(
        LogConfig(
            server=server_config("immutable_log", tmp_path / "log"),
            settings=LogSettings(origin=ORIGIN),
            key_file=tmp_path / "log" / "immutable_log.key",
            registration=DomainRegistration(
                world.registry_address, "immutable_log", "127.0.0.1", CAPABILITIES
            ),
            eventbus_address=f"127.0.0.1:{bus_port}",
        )
    )
    async with serving(service.config.server, service) as (_, log_chan):
        subscriptions = service.subscriptions
        assert subscriptions is not None
        await eventually(lambda: subscriptions.failures > 0, every_s=0.05)
        assert not subscriptions.created.is_set()
        config = bus_config(tmp_path / "bus", world.registry_address)
        config = dataclasses.replace(
            config, server=dataclasses.replace(config.server, port=bus_port)
        )
        bus = EventBusServer(config)
        async with serving(bus.config.server, bus):
            await asyncio.wait_for(subscriptions.created.wait(), 60)
            publisher = EventBusPublisher(f"127.0.0.1:{bus_port}")
            try:
                await publisher.publish(
                    [
                        OutboxEvent(1, "h-1", "healing.completed", "guardian", "x", {}, "", 1.0e9),
                    ]
                )
            finally:
                await publisher.close()
            stub = pb_grpc.ImmutableLogServiceStub(log_chan)
            await entry_of_kind(stub, "healing.completed")
