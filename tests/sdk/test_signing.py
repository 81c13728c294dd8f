"""SDK domains sign what they publish: a real registry, trust kernel and event bus in
`reject` mode; the domain's key is created 0600, registered with proof of possession, put in
its registry registration, and its events pass while forged ones are refused."""

from __future__ import annotations

import asyncio
import stat
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from grace.domain.v1 import domain_pb2, domain_pb2_grpc
from grace.eventbus.v1 import event_pb2, eventbus_pb2, eventbus_pb2_grpc
from grace.kernels.trust.v1 import trust_pb2, trust_pb2_grpc
from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common import signing
from services.common.channels import channel
from services.common.event_signing import sign_event, sign_event_batch, verify_event
from services.common.timestamps import to_timestamp
from services.eventbus.config import EventBusConfig
from services.eventbus.server import EventBusServer
from services.kernels.trust.config import TrustConfig
from services.kernels.trust.server import TrustServer
from services.kernels.trust.trust import TrustSettings
from services.registry.config import RegistryConfig
from services.registry.registry import RegistrySettings
from services.registry.server import RegistryServer
from services.sdk import Context, Domain
from tests.eventbus.conftest import FAST
from tests.sdk.conftest import domain_config
from tests.support import eventually, server_config, serving


@dataclass
class Peers:
    registry: str
    trust: str
    bus: str
    registry_stub: registry_pb2_grpc.RegistryServiceStub
    trust_stub: trust_pb2_grpc.TrustServiceStub
    bus_stub: eventbus_pb2_grpc.EventBusServiceStub


@pytest.fixture
async def peers(tmp_path: Path) -> AsyncIterator[Peers]:
    """Registry, trust kernel, and a bus that rejects unsigned or forged events."""
    async with AsyncExitStack() as stack:
        registry = RegistryServer(
            RegistryConfig(
                server=server_config("registry", tmp_path / "registry"),
                settings=RegistrySettings(30, 60, 100),
            )
        )
        reg, reg_chan = await stack.enter_async_context(serving(registry.config.server, registry))
        trust = TrustServer(
            TrustConfig(
                server=server_config("trust", tmp_path / "trust"),
                settings=TrustSettings(),
                registry_address=reg.address,
                registry_timeout_s=2.0,
                registration=None,
            )
        )
        tru, trust_chan = await stack.enter_async_context(serving(trust.config.server, trust))
        bus = EventBusServer(
            EventBusConfig(
                server=server_config("eventbus", tmp_path / "bus"),
                settings=FAST,
                registry_address=reg.address,
                verify_signatures="reject",
                trust_address=tru.address,
            )
        )
        bus_server, bus_chan = await stack.enter_async_context(serving(bus.config.server, bus))
        yield Peers(
            reg.address,
            tru.address,
            bus_server.address,
            registry_pb2_grpc.RegistryServiceStub(reg_chan),
            trust_pb2_grpc.TrustServiceStub(trust_chan),
            eventbus_pb2_grpc.EventBusServiceStub(bus_chan),
        )


def publishing_domain() -> Domain:
    domain = Domain("signer_domain", capabilities=["signing"])

    @domain.action("announce")
    async def announce(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
        event_id = await ctx.publish("signer.announced", {"n": data.get("n", 0)})
        return {"event_id": event_id}

    return domain


async def history(peers: Peers) -> list[event_pb2.Event]:
    response = await peers.bus_stub.GetHistory(eventbus_pb2.GetHistoryRequest(pattern="signer.*"))
    return list(response.events)


def own_event(event_id: str, key: signing.SigningKey | None) -> event_pb2.Event:
    event = event_pb2.Event(
        id=event_id,
        event_type="signer.announced",
        source_domain="signer_domain",
        time=to_timestamp(time.time()),
    )
    event.data.update({"n": 99})
    return sign_event(event, key) if key else event


def as_publish(event: event_pb2.Event) -> eventbus_pb2.PublishRequest:
    return eventbus_pb2.PublishRequest(
        id=event.id,
        event_type=event.event_type,
        source_domain=event.source_domain,
        time=event.time,
        data=event.data,
        signature=event.signature,
        signature_key_id=event.signature_key_id,
    )


async def test_a_domain_registers_its_key_and_its_events_pass_a_rejecting_bus(
    peers: Peers, tmp_path: Path
) -> None:
    config = domain_config(
        tmp_path / "domain",
        "signer_domain",
        registry_addr=peers.registry,
        eventbus_addr=peers.bus,
        trust_addr=peers.trust,
    )
    async with publishing_domain().serve(config) as running:
        key_file = tmp_path / "domain" / "signer_domain.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = signing.load_key(key_file)
        await asyncio.wait_for(running.service.identity.registered.wait(), 20)
        identity = await peers.trust_stub.GetIdentity(
            trust_pb2.GetIdentityRequest(domain_id="signer_domain")
        )
        assert identity.identity.current_key.public_key == key.public_key
        await eventually(running.service.registrar.registered.is_set, every_s=0.05)
        registered = await peers.registry_stub.GetDomain(
            registry_pb2.GetDomainRequest(domain_id="signer_domain")
        )
        assert registered.domain.public_key == key.public_key

        async with channel(running.server.address) as chan:
            response = await domain_pb2_grpc.DomainServiceStub(chan).Execute(
                domain_pb2.ExecuteRequest(action="announce", idempotency_key="k1")
            )
        event_id = response.output["event_id"]

        async def published() -> bool:
            return any(e.id == event_id for e in await history(peers))

        await eventually(published, every_s=0.05)
    stored = next(e for e in await history(peers) if e.id == event_id)
    assert stored.signature_key_id == key.key_id
    assert len(stored.signature) == signing.SIGNATURE_BYTES

    # Someone else's key, or no signature at all, is refused for this source.
    for forged in (own_event("forged-1", signing.SigningKey.generate()), own_event("bare", None)):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await peers.bus_stub.Publish(as_publish(forged))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # The domain's own key still passes, also outside the SDK.
    await peers.bus_stub.Publish(as_publish(own_event("mine", key)))


async def test_a_rejecting_bus_takes_batch_signed_events_and_refuses_only_the_forged_ones(
    peers: Peers, tmp_path: Path
) -> None:
    config = domain_config(
        tmp_path / "domain", "signer_domain", eventbus_addr=peers.bus, trust_addr=peers.trust
    )
    async with publishing_domain().serve(config) as running:
        await asyncio.wait_for(running.service.identity.registered.wait(), 20)
        key = running.service.key

    def batch(prefix: str, signer: signing.SigningKey) -> list[event_pb2.Event]:
        return list(sign_event_batch([own_event(f"{prefix}-{n}", None) for n in range(5)], signer))

    async def publish(events: list[event_pb2.Event]) -> list[str]:
        response = await peers.bus_stub.PublishBatch(
            eventbus_pb2.PublishBatchRequest(events=events)
        )
        return [eventbus_pb2.PublishStatus.Name(r.status) for r in response.results]

    assert await publish(batch("good", key)) == ["PUBLISH_STATUS_STORED"] * 5
    stored = [e for e in await history(peers) if e.id.startswith("good-")]
    assert len(stored) == 5
    public = key.private_key.public_key()
    # Each stored event verifies alone, with the source's public key only.
    assert all(e.signature_batch_size == 5 and verify_event(e, public) for e in stored)

    one_forged = batch("mixed", key)
    one_forged[2].data.update({"n": 100})  # changed after signing
    statuses = await publish(one_forged)
    assert statuses[2] == "PUBLISH_STATUS_REJECTED"
    assert statuses[:2] + statuses[3:] == ["PUBLISH_STATUS_STORED"] * 4

    assert (
        await publish(batch("mallory", signing.SigningKey.generate()))
        == ["PUBLISH_STATUS_REJECTED"] * 5
    )

    # One event of a signed batch, re-sent alone through unary Publish, keeps its proof.
    lone = batch("lone", key)[3]
    request = eventbus_pb2.PublishRequest(
        id=lone.id,
        event_type=lone.event_type,
        source_domain=lone.source_domain,
        signature=lone.signature,
        signature_key_id=lone.signature_key_id,
        signature_leaf_index=lone.signature_leaf_index,
        signature_batch_size=lone.signature_batch_size,
        signature_inclusion_path=lone.signature_inclusion_path,
    )
    request.time.CopyFrom(lone.time)
    request.data.CopyFrom(lone.data)
    assert not (await peers.bus_stub.Publish(request)).duplicate
    tampered = eventbus_pb2.PublishRequest()
    tampered.CopyFrom(request)
    tampered.id = "lone-tampered"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await peers.bus_stub.Publish(tampered)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_domain_keeps_its_key_across_restarts(peers: Peers, tmp_path: Path) -> None:
    config = domain_config(
        tmp_path / "domain", "signer_domain", eventbus_addr=peers.bus, trust_addr=peers.trust
    )
    domain = publishing_domain()
    async with domain.serve(config) as running:
        await asyncio.wait_for(running.service.identity.registered.wait(), 20)
        first = running.service.key.public_key
    async with domain.serve(config) as running:
        # Registering the same key again is accepted: the domain signs again at once.
        await asyncio.wait_for(running.service.identity.registered.wait(), 20)
        assert running.service.key.public_key == first
        assert running.service.identity.refused == ""


async def test_a_domain_whose_identity_holds_another_key_publishes_unsigned(
    peers: Peers, tmp_path: Path
) -> None:
    config = domain_config(
        tmp_path / "first", "signer_domain", eventbus_addr=peers.bus, trust_addr=peers.trust
    )
    async with publishing_domain().serve(config) as running:
        await asyncio.wait_for(running.service.identity.registered.wait(), 20)
    # Same domain id, fresh data dir: a new key the trust kernel refuses (rotate instead).
    config = domain_config(
        tmp_path / "second", "signer_domain", eventbus_addr=peers.bus, trust_addr=peers.trust
    )
    async with publishing_domain().serve(config) as running:
        identity = running.service.identity
        await eventually(lambda: identity.refused != "", every_s=0.05)
        assert "ALREADY_EXISTS" in identity.refused
        assert not identity.registered.is_set()
        assert running.service._publisher.signer is None
