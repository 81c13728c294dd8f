"""The trust kernel over gRPC with a real registry and a real event bus: registration with
a challenge, message verification, scores read from the registry, the DomainService face,
and the bus rejecting forged and unsigned events of registered sources."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from grace.domain.v1 import domain_pb2, domain_pb2_grpc
from grace.eventbus.v1 import event_pb2, eventbus_pb2, eventbus_pb2_grpc
from grace.kernels.trust.v1 import trust_pb2, trust_pb2_grpc
from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.event_signing import sign_event
from services.common.signing import SigningKey
from services.eventbus.config import EventBusConfig
from services.eventbus.server import EventBusServer
from services.kernels.trust import statements
from services.kernels.trust.config import TrustConfig
from services.kernels.trust.server import TrustServer
from services.kernels.trust.trust import TrustSettings
from services.registry.config import RegistryConfig
from services.registry.registry import RegistrySettings
from services.registry.server import RegistryServer
from tests.eventbus.conftest import FAST
from tests.support import server_config, serving


@dataclass
class Stack:
    trust: trust_pb2_grpc.TrustServiceStub
    domain: domain_pb2_grpc.DomainServiceStub
    registry: registry_pb2_grpc.RegistryServiceStub
    bus: eventbus_pb2_grpc.EventBusServiceStub


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    registry = RegistryServer(
        RegistryConfig(
            server=server_config("registry", tmp_path),
            settings=RegistrySettings(default_lease_ttl_s=30, deregister_after_s=60, history=100),
        )
    )
    async with serving(registry.config.server, registry) as (reg_server, reg_chan):
        trust = TrustServer(
            TrustConfig(
                server=server_config("trust", tmp_path),
                settings=TrustSettings(roots=("core",)),
                registry_address=reg_server.address,
                registry_timeout_s=2.0,
                registration=None,
            )
        )
        async with serving(trust.config.server, trust) as (trust_server, trust_chan):
            bus = EventBusServer(
                EventBusConfig(
                    server=server_config("eventbus", tmp_path),
                    settings=FAST,
                    registry_address=reg_server.address,
                    verify_signatures="reject",
                    trust_address=trust_server.address,
                )
            )
            async with serving(bus.config.server, bus) as (_, bus_chan):
                yield Stack(
                    trust_pb2_grpc.TrustServiceStub(trust_chan),
                    domain_pb2_grpc.DomainServiceStub(trust_chan),
                    registry_pb2_grpc.RegistryServiceStub(reg_chan),
                    eventbus_pb2_grpc.EventBusServiceStub(bus_chan),
                )


async def register(stack: Stack, name: str, key: SigningKey) -> None:
    challenge = (
        await stack.trust.CreateChallenge(trust_pb2.CreateChallengeRequest(domain_id=name))
    ).challenge
    body = statements.registration(name, key.public_key, challenge)
    await stack.trust.RegisterIdentity(
        trust_pb2.RegisterIdentityRequest(
            domain_id=name,
            public_key=key.public_key,
            challenge=challenge,
            signature=statements.sign(key, statements.REGISTRATION, body),
        )
    )


async def test_registration_and_verification_over_grpc(stack: Stack) -> None:
    core, ai = SigningKey.generate(), SigningKey.generate()
    await register(stack, "core", core)
    await register(stack, "ai_domain", ai)
    body = statements.certification("core", "ai_domain", "full", 1_800_000_000)
    established = await stack.trust.EstablishTrust(
        trust_pb2.EstablishTrustRequest(
            issuer="core",
            subject="ai_domain",
            level=trust_pb2.TRUST_LEVEL_FULL,
            issued_at=1_800_000_000,
            signature=statements.sign(core, statements.CERTIFICATION, body),
        )
    )
    assert established.certification.valid
    assert not established.mutual
    answer = await stack.trust.VerifyMessage(
        trust_pb2.VerifyMessageRequest(
            domain_id="ai_domain", message=b"hello", signature=ai.sign(b"hello")
        )
    )
    assert answer.verified
    assert answer.trusted
    assert list(answer.trust_path) == ["core", "ai_domain"]
    forged = await stack.trust.VerifyMessage(
        trust_pb2.VerifyMessageRequest(
            domain_id="ai_domain", message=b"hello", signature=core.sign(b"hello")
        )
    )
    assert not forged.verified
    assert not forged.trusted
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.trust.GetIdentity(trust_pb2.GetIdentityRequest(domain_id="nobody"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.trust.RegisterIdentity(
            trust_pb2.RegisterIdentityRequest(domain_id="x", public_key=b"short")
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_score_reads_lease_and_success_from_the_registry(stack: Stack) -> None:
    ai = SigningKey.generate()
    await register(stack, "ai_domain", ai)
    before = await stack.trust.GetTrustScore(trust_pb2.GetTrustScoreRequest(domain_id="ai_domain"))
    lease = {c.name: c for c in before.components}["lease_reliability"]
    assert not lease.available
    assert "does not know" in lease.detail
    await stack.registry.RegisterDomain(
        registry_pb2.RegisterDomainRequest(domain_id="ai_domain", host="127.0.0.1", port=8202)
    )
    await stack.registry.Heartbeat(
        registry_pb2.HeartbeatRequest(
            domain_id="ai_domain", metrics=registry_pb2.DomainMetrics(success_rate=0.5)
        )
    )
    after = await stack.trust.GetTrustScore(trust_pb2.GetTrustScoreRequest(domain_id="ai_domain"))
    parts = {c.name: c for c in after.components}
    assert parts["lease_reliability"].available
    assert parts["lease_reliability"].value == 1.0
    assert parts["step_success"].value == pytest.approx(0.5)
    assert after.score == pytest.approx(0.4 * 0.5 + 0.3 * 1.0 + 0.3 * 0.5)


async def test_workflows_can_call_verify_on_the_trust_domain(stack: Stack) -> None:
    ai = SigningKey.generate()
    await register(stack, "ai_domain", ai)
    request = domain_pb2.ExecuteRequest(domain_id="trust", action="verify")
    request.input.update(
        {
            "domain_id": "ai_domain",
            "message": "result=42",
            "signature_b64": base64.b64encode(ai.sign(b"result=42")).decode(),
        }
    )
    output = json_format.MessageToDict((await stack.domain.Execute(request)).output)
    assert output["verified"] is True
    assert output["trusted"] is False
    described = await stack.domain.DescribeDomain(domain_pb2.DescribeDomainRequest())
    assert {a.name for a in described.actions} == {"verify", "score", "identity"}


def signed_event(key: SigningKey, source: str, event_id: str) -> event_pb2.Event:
    event = event_pb2.Event(id=event_id, event_type="ml.prediction", source_domain=source)
    event.time.FromSeconds(1_800_000_000)
    event.data.update({"label": "cat"})
    return sign_event(event, key)


def publish_request(event: event_pb2.Event) -> eventbus_pb2.PublishRequest:
    return eventbus_pb2.PublishRequest(
        id=event.id,
        event_type=event.event_type,
        source_domain=event.source_domain,
        time=event.time,
        data=event.data,
        signature=event.signature,
        signature_key_id=event.signature_key_id,
    )


async def test_the_bus_rejects_forged_and_unsigned_events_of_registered_sources(
    stack: Stack,
) -> None:
    ai, mallory = SigningKey.generate(), SigningKey.generate()
    await register(stack, "ai_domain", ai)
    ok = await stack.bus.Publish(publish_request(signed_event(ai, "ai_domain", "e-1")))
    assert ok.sequence > 0
    for bad in (
        signed_event(mallory, "ai_domain", "e-2"),
        event_pb2.Event(id="e-3", event_type="ml.prediction", source_domain="ai_domain"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stack.bus.Publish(publish_request(bad))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    batch = await stack.bus.PublishBatch(
        eventbus_pb2.PublishBatchRequest(
            events=[signed_event(ai, "ai_domain", "e-4"), signed_event(mallory, "ai_domain", "e-5")]
        )
    )
    statuses = [r.status for r in batch.results]
    assert statuses == [eventbus_pb2.PUBLISH_STATUS_STORED, eventbus_pb2.PUBLISH_STATUS_REJECTED]
    open_source = await stack.bus.Publish(
        eventbus_pb2.PublishRequest(event_type="ml.prediction", source_domain="newcomer")
    )
    assert open_source.sequence > 0
