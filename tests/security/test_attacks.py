"""The attacks of an unauthenticated Grace, each against real secure servers.

Every test here fails against a Grace without identity and access control (anyone who
reached a port could do these things) and passes now.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grace.eventbus.v1 import eventbus_pb2, eventbus_pb2_grpc
from grace.guardian.v1 import guardian_pb2, guardian_pb2_grpc
from grace.kernels.governance.v1 import governance_pb2 as gov
from grace.kernels.governance.v1 import governance_pb2_grpc
from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.channels import ClientSecurity, channel
from services.common.pki import CertificateAuthority, Identity, leaf_files
from services.common.tokens import TokenStore
from services.eventbus.server import EventBusServer
from services.guardian.config import GuardianConfig
from services.guardian.server import GuardianServer
from services.kernels.governance.config import GovernanceConfig
from services.kernels.governance.governance import GovernanceSettings
from services.kernels.governance.model import Mode
from services.kernels.governance.server import GovernanceServer
from services.registry.server import RegistryServer
from tests.eventbus.conftest import bus_config
from tests.guardian.conftest import component, topology
from tests.registry.conftest import registry_config
from tests.support import free_ports, server_config, serving, session_pki

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED


async def code_of(call: object) -> grpc.StatusCode:
    """The status code a call ends with (OK when it succeeds)."""
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def anonymous(address: str) -> grpc.aio.Channel:
    """A caller with a Grace `client` certificate (it connects) but no token."""
    return channel(address, security=session_pki().client())


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[str]:
    service = RegistryServer(registry_config(tmp_path))
    async with serving(service.config.server, service) as (server, _):
        yield server.address


def register(domain_id: str, port: int) -> registry_pb2.RegisterDomainRequest:
    return registry_pb2.RegisterDomainRequest(domain_id=domain_id, host="127.0.0.1", port=port)


async def test_nobody_but_a_domain_itself_can_move_its_registry_record(registry: str) -> None:
    pki = session_pki()
    async with pki.channel_as(registry, "domain:ai_domain", "domain:ai_domain") as owner:
        await registry_pb2_grpc.RegistryServiceStub(owner).RegisterDomain(
            register("ai_domain", 8202)
        )
    async with anonymous(registry) as chan:
        with pytest.raises(grpc.aio.AioRpcError) as anon:
            await registry_pb2_grpc.RegistryServiceStub(chan).RegisterDomain(
                register("ai_domain", 9999)
            )
    assert anon.value.code() == UNAUTHENTICATED
    assert "Bearer" in (anon.value.details() or "")
    async with pki.channel_as(registry, "domain:evil", "domain:evil") as evil:
        assert (
            await code_of(
                registry_pb2_grpc.RegistryServiceStub(evil).RegisterDomain(
                    register("ai_domain", 9999)
                )
            )
            == DENIED
        )
    async with pki.channel_as(registry, "root", "admin") as admin:
        with pytest.raises(grpc.aio.AioRpcError) as moved:
            await registry_pb2_grpc.RegistryServiceStub(admin).RegisterDomain(
                register("ai_domain", 9999)
            )
    assert moved.value.code() == DENIED
    assert "bound to domain:ai_domain" in (moved.value.details() or "")
    async with channel(registry) as chan:
        record = await registry_pb2_grpc.RegistryServiceStub(chan).GetDomain(
            registry_pb2.GetDomainRequest(domain_id="ai_domain")
        )
    assert record.domain.address == "127.0.0.1:8202"


async def test_nobody_else_heartbeats_or_deregisters_a_domain(registry: str) -> None:
    pki = session_pki()
    async with pki.channel_as(registry, "domain:ai_domain", "domain:ai_domain") as owner:
        stub = registry_pb2_grpc.RegistryServiceStub(owner)
        await stub.RegisterDomain(register("ai_domain", 8202))
    async with anonymous(registry) as chan:
        assert (
            await code_of(
                registry_pb2_grpc.RegistryServiceStub(chan).DeregisterDomain(
                    registry_pb2.DeregisterDomainRequest(domain_id="ai_domain")
                )
            )
            == UNAUTHENTICATED
        )
    async with pki.channel_as(registry, "domain:evil", "domain:evil") as evil:
        stub = registry_pb2_grpc.RegistryServiceStub(evil)
        assert (
            await code_of(
                stub.DeregisterDomain(registry_pb2.DeregisterDomainRequest(domain_id="ai_domain"))
            )
            == DENIED
        )
        assert (
            await code_of(stub.Heartbeat(registry_pb2.HeartbeatRequest(domain_id="ai_domain")))
            == DENIED
        )
    async with pki.channel_as(registry, "ops", "operator") as ops:
        assert (
            await code_of(
                registry_pb2_grpc.RegistryServiceStub(ops).DeregisterDomain(
                    registry_pb2.DeregisterDomainRequest(domain_id="ai_domain")
                )
            )
            == DENIED
        )


async def test_anonymous_callers_read_nothing_but_health(registry: str) -> None:
    async with anonymous(registry) as chan:
        stub = registry_pb2_grpc.RegistryServiceStub(chan)
        assert await code_of(stub.ListDomains(registry_pb2.ListDomainsRequest())) == (
            UNAUTHENTICATED
        )
        health = await health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    async with session_pki().channel_as(registry, "rita", "reader") as reader:
        listed = await registry_pb2_grpc.RegistryServiceStub(reader).ListDomains(
            registry_pb2.ListDomainsRequest()
        )
        assert list(listed.domains) == []


async def test_a_caller_without_a_grace_certificate_cannot_connect(
    registry: str, tmp_path: Path
) -> None:
    pki = session_pki()
    no_cert = ClientSecurity(pki.ca_file, token=pki.admin_token)
    stranger_ca = CertificateAuthority.load_or_create(tmp_path / "stranger")
    files = leaf_files(tmp_path / "stranger", Identity("component", "registry"))
    stranger_ca.issue_files(Identity("component", "registry"), files)
    forged = ClientSecurity(pki.ca_file, files.cert, files.key, None)
    for security in (no_cert, forged):
        async with channel(registry, security=security) as chan:
            call = registry_pb2_grpc.RegistryServiceStub(chan).ListDomains(
                registry_pb2.ListDomainsRequest(), timeout=5
            )
            assert await code_of(call) in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
    async with grpc.aio.insecure_channel(registry) as plain:
        call = registry_pb2_grpc.RegistryServiceStub(plain).ListDomains(
            registry_pb2.ListDomainsRequest(), timeout=5
        )
        assert await code_of(call) in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )


async def test_a_revoked_token_stops_authenticating(registry: str) -> None:
    pki = session_pki()
    token, record = TokenStore(pki.tokens_file).create("temp", ["reader"])
    async with channel(registry, security=pki.client(token=token)) as chan:
        stub = registry_pb2_grpc.RegistryServiceStub(chan)
        await stub.ListDomains(registry_pb2.ListDomainsRequest())
        TokenStore(pki.tokens_file).revoke(record.id)
        assert await code_of(stub.ListDomains(registry_pb2.ListDomainsRequest())) == (
            UNAUTHENTICATED
        )


async def test_a_domain_cannot_publish_as_another_domain(tmp_path: Path) -> None:
    service = EventBusServer(bus_config(tmp_path))
    async with serving(service.config.server, service) as (server, _):
        pki = session_pki()
        data = struct_pb2.Struct()
        async with pki.channel_as(server.address, "domain:evil", "domain:evil") as evil:
            stub = eventbus_pb2_grpc.EventBusServiceStub(evil)
            spoofed = eventbus_pb2.PublishRequest(
                event_type="workflow.completed", source_domain="orchestrator", data=data
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Publish(spoofed)
            assert refused.value.code() == DENIED
            assert "source_domain='orchestrator'" in (refused.value.details() or "")
            own = eventbus_pb2.PublishRequest(event_type="evil.said", source_domain="evil")
            assert (await stub.Publish(own)).sequence == 1
        async with anonymous(server.address) as chan:
            history = eventbus_pb2_grpc.EventBusServiceStub(chan).GetHistory(
                eventbus_pb2.GetHistoryRequest(pattern="*")
            )
            assert await code_of(history) == UNAUTHENTICATED


async def test_policies_mode_and_approvals_are_not_for_anyone(tmp_path: Path) -> None:
    config = GovernanceConfig(
        server=server_config("governance", tmp_path),
        settings=GovernanceSettings(mode=Mode.ENFORCE),
        relay_interval_s=0.05,
    )

    class Sink:
        async def publish(self, events: object) -> None:
            return None

    service = GovernanceServer(config, bus=Sink(), immutable_log=Sink())
    async with serving(config.server, service) as (server, _):
        pki = session_pki()
        policy = gov.Policy(
            policy_id="freeze",
            description="no healing",
            principal="*",
            action="heal:*",
            effect=gov.EFFECT_FORBID,
        )
        async with anonymous(server.address) as chan:
            stub = governance_pb2_grpc.GovernanceServiceStub(chan)
            assert await code_of(stub.DeletePolicy(gov.DeletePolicyRequest(policy_id="x"))) == (
                UNAUTHENTICATED
            )
            assert await code_of(stub.SetMode(gov.SetModeRequest(mode=gov.MODE_LOG_ONLY))) == (
                UNAUTHENTICATED
            )
        async with pki.channel_as(server.address, "rita", "reader") as reader:
            stub = governance_pb2_grpc.GovernanceServiceStub(reader)
            assert await code_of(stub.CreatePolicy(gov.CreatePolicyRequest(policy=policy))) == (
                DENIED
            )
            assert await code_of(stub.Approve(gov.ApproveRequest(approval_id="a"))) == DENIED
        async with pki.channel_as(server.address, "olga", "operator") as ops:
            stub = governance_pb2_grpc.GovernanceServiceStub(ops)
            await stub.CreatePolicy(gov.CreatePolicyRequest(policy=policy))
            assert await code_of(stub.SetMode(gov.SetModeRequest(mode=gov.MODE_LOG_ONLY))) == DENIED
            with pytest.raises(grpc.aio.AioRpcError) as invented:
                await stub.Approve(gov.ApproveRequest(approval_id="a", approver="ceo"))
            assert invented.value.code() == DENIED
            assert "approver='ceo'" in (invented.value.details() or "")


async def test_stop_restart_heal_and_start_need_an_operator(tmp_path: Path) -> None:
    (a,) = free_ports(1)
    topo = topology({"alpha": component("alpha", a)})
    config = GuardianConfig(server=server_config("guardian", tmp_path), governance=False)

    class Sink:
        async def publish(self, events: object) -> None:
            return None

    service = GuardianServer(config, topo, publisher=Sink())
    async with serving(config.server, service) as (server, _):
        pki = session_pki()
        for chan_factory, expected in (
            (lambda: anonymous(server.address), UNAUTHENTICATED),
            (lambda: pki.channel_as(server.address, "rita", "reader"), DENIED),
            (
                lambda: pki.channel_as(server.address, "domain:evil", "domain:evil"),
                DENIED,
            ),
        ):
            async with chan_factory() as chan:
                stub = guardian_pb2_grpc.GuardianServiceStub(chan)
                calls = [
                    stub.StopComponent(guardian_pb2.StopComponentRequest(component_name="alpha")),
                    stub.RestartComponent(
                        guardian_pb2.RestartComponentRequest(component_name="alpha")
                    ),
                    stub.StartComponent(guardian_pb2.StartComponentRequest(component_name="alpha")),
                    stub.Heal(guardian_pb2.HealRequest(component_name="alpha")),
                ]
                assert [await code_of(c) for c in calls] == [expected] * 4
        async with pki.channel_as(server.address, "rita", "reader") as reader:
            listed = await guardian_pb2_grpc.GuardianServiceStub(reader).ListComponents(
                guardian_pb2.ListComponentsRequest()
            )
            assert [c.name for c in listed.components] == ["alpha"]
            assert listed.components[0].state == guardian_pb2.COMPONENT_STATE_SERVING
