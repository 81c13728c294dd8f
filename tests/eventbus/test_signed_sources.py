"""The bus refuses, by default, unsigned or forged events claiming a source that has an
identity, and Grace's own components sign what they publish so none of theirs is refused."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from grace.eventbus.v1 import event_pb2, eventbus_pb2, eventbus_pb2_grpc
from grace.kernels.trust.v1 import trust_pb2, trust_pb2_grpc
from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.components import COMPONENT_IDS
from services.common.signing import SigningKey
from services.eventbus.config import EventBusConfig
from services.eventbus.server import EventBusServer
from services.kernels.trust.claims import ClaimRules
from services.kernels.trust.config import TrustConfig
from services.kernels.trust.server import TrustServer
from services.kernels.trust.trust import TrustSettings
from services.registry.config import RegistryConfig
from services.registry.registry import RegistrySettings
from services.registry.server import RegistryServer
from tests.eventbus.conftest import FAST
from tests.kernels.trust.test_claims import forged
from tests.support import server_config, serving


@dataclass
class Platform:
    bus: eventbus_pb2_grpc.EventBusServiceStub
    trust: trust_pb2_grpc.TrustServiceStub
    registry: registry_pb2_grpc.RegistryServiceStub


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Platform]:
    """Trust, the bus in its default signature mode, and a registry that publishes."""
    async with contextlib.AsyncExitStack() as stack:
        trust = TrustServer(
            TrustConfig(
                server=server_config("trust", tmp_path),
                settings=TrustSettings(claims=ClaimRules(COMPONENT_IDS, tmp_path)),
                registry_address="127.0.0.1:1",
                registry_timeout_s=1.0,
                registration=None,
            )
        )
        trust_server, trust_chan = await stack.enter_async_context(
            serving(trust.config.server, trust)
        )
        defaults = EventBusConfig.from_env({})
        bus = EventBusServer(
            EventBusConfig(
                server=server_config("eventbus", tmp_path),
                settings=FAST,
                registry_address="127.0.0.1:1",
                verify_signatures=defaults.verify_signatures,
                trust_address=trust_server.address,
            )
        )
        bus_server, bus_chan = await stack.enter_async_context(serving(bus.config.server, bus))
        peers = {
            "GRACE_EVENTBUS_ADDR": bus_server.address,
            "GRACE_TRUST_ADDR": trust_server.address,
        }
        registry = RegistryServer(
            RegistryConfig(
                server=server_config("registry", tmp_path, peers=peers),
                settings=RegistrySettings(
                    default_lease_ttl_s=30, deregister_after_s=60, history=100
                ),
            )
        )
        _, reg_chan = await stack.enter_async_context(serving(registry.config.server, registry))
        yield Platform(
            eventbus_pb2_grpc.EventBusServiceStub(bus_chan),
            trust_pb2_grpc.TrustServiceStub(trust_chan),
            registry_pb2_grpc.RegistryServiceStub(reg_chan),
        )


async def eventually_registered(trust: trust_pb2_grpc.TrustServiceStub, name: str) -> str:
    for _ in range(200):
        try:
            got = await trust.GetIdentity(trust_pb2.GetIdentityRequest(domain_id=name))
            return str(got.identity.current_key.key_id)
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"{name} never registered its key")


def test_the_default_signature_mode_is_reject() -> None:
    assert EventBusConfig.from_env({}).verify_signatures == "reject"


async def test_a_component_signs_its_events_and_forgeries_under_its_id_are_refused(
    platform: Platform,
) -> None:
    key_id = await eventually_registered(platform.trust, "registry")
    await platform.registry.RegisterDomain(
        registry_pb2.RegisterDomainRequest(domain_id="weather", host="127.0.0.1", port=9100)
    )
    history: list[event_pb2.Event] = []
    for _ in range(200):
        found = await platform.bus.GetHistory(
            eventbus_pb2.GetHistoryRequest(source_domain="registry", pattern="*")
        )
        history = [e for e in found.events if e.data["domain_id"] == "weather"]
        if history:
            break
        await asyncio.sleep(0.05)
    assert history, "the registry's event never reached the bus"
    assert {e.signature_key_id for e in history} == {key_id}

    unsigned = await platform.bus.PublishBatch(
        eventbus_pb2.PublishBatchRequest(
            events=[
                event_pb2.Event(
                    id="fake-1", event_type="domain.registered", source_domain="registry"
                )
            ]
        )
    )
    [result] = unsigned.results
    assert result.status == eventbus_pb2.PUBLISH_STATUS_REJECTED
    assert "'registry' has a registered identity" in result.error
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await platform.bus.Publish(
            eventbus_pb2.PublishRequest(
                id="fake-2",
                event_type="domain.registered",
                source_domain="registry",
                signature=forged("registry", SigningKey.generate(), "fake-2").signature,
                signature_key_id="0123456789abcdef",
            )
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "does not verify with the active key registered for 'registry'" in (
        refused.value.details() or ""
    )


async def test_unsigned_events_from_a_source_without_identity_are_still_accepted(
    platform: Platform,
) -> None:
    accepted = await platform.bus.Publish(
        eventbus_pb2.PublishRequest(event_type="weather.report", source_domain="newcomer")
    )
    assert accepted.sequence > 0


async def test_a_batch_answers_invalid_refused_and_stored_entries_each_in_its_place(
    platform: Platform,
) -> None:
    await eventually_registered(platform.trust, "registry")
    reply = await platform.bus.PublishBatch(
        eventbus_pb2.PublishBatchRequest(
            events=[
                event_pb2.Event(id="ok-1", event_type="weather.report", source_domain="newcomer"),
                event_pb2.Event(id="forged-1", event_type="domain.x", source_domain="registry"),
                event_pb2.Event(id="bad-1", event_type="Not A Type!", source_domain="newcomer"),
                event_pb2.Event(id="ok-2", event_type="weather.report", source_domain="newcomer"),
            ]
        )
    )
    assert [(r.id, r.status) for r in reply.results] == [
        ("ok-1", eventbus_pb2.PUBLISH_STATUS_STORED),
        ("forged-1", eventbus_pb2.PUBLISH_STATUS_REJECTED),
        ("bad-1", eventbus_pb2.PUBLISH_STATUS_REJECTED),
        ("ok-2", eventbus_pb2.PUBLISH_STATUS_STORED),
    ]
    assert "'registry' has a registered identity" in reply.results[1].error
    assert "events[2].event_type" in reply.results[2].error
    assert reply.results[3].sequence == reply.results[0].sequence + 1
