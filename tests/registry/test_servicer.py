"""The registry over real gRPC: every RPC, every error path, watches and restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.registry.server import SERVICE_NAME, RegistryServer
from tests.registry.conftest import RunningRegistry, registry_config
from tests.support import ManualClock, serving

pb = registry_pb2
SEED_REGISTRATION = pb.RegisterDomainRequest(
    domain_id="ai_domain", port=8202, capabilities=["chat", "ml", "prediction"]
)


async def expect_error(call: object, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    assert raised.value.code() == code, raised.value.details()
    return raised.value


async def test_seed_registration_defaults_the_host_to_the_caller(
    stub: registry_pb2_grpc.RegistryServiceStub,
) -> None:
    response = await stub.RegisterDomain(SEED_REGISTRATION)
    domain = response.domain
    assert response.created
    assert (domain.host, domain.port, domain.address) == ("127.0.0.1", 8202, "127.0.0.1:8202")
    assert list(domain.capabilities) == ["chat", "ml", "prediction"]
    assert domain.status == pb.DOMAIN_STATUS_HEALTHY
    assert domain.lease_ttl.seconds == 30
    assert domain.lease_expires_at.seconds - domain.last_heartbeat_at.seconds == 30


async def test_forwarded_for_sets_the_host_when_called_through_the_gateway(
    stub: registry_pb2_grpc.RegistryServiceStub,
) -> None:
    response = await stub.RegisterDomain(
        SEED_REGISTRATION, metadata=[("x-forwarded-for", "10.1.2.3, 127.0.0.1")]
    )
    assert response.domain.host == "10.1.2.3"


async def test_every_read_rpc_reflects_a_registration(
    stub: registry_pb2_grpc.RegistryServiceStub,
) -> None:
    await stub.RegisterDomain(SEED_REGISTRATION)
    await stub.RegisterDomain(
        pb.RegisterDomainRequest(
            domain_id="memory_domain",
            host="10.0.0.5",
            port=8201,
            capabilities=["memory"],
            lease_ttl=duration_pb2.Duration(seconds=90),
            metadata={"zone": "a"},
        )
    )

    got = await stub.GetDomain(pb.GetDomainRequest(domain_id="memory_domain"))
    assert got.domain.address == "10.0.0.5:8201"
    assert got.domain.metadata == {"zone": "a"}
    assert got.domain.lease_ttl.seconds == 90

    listed = await stub.ListDomains(pb.ListDomainsRequest(page_size=1))
    assert [d.domain_id for d in listed.domains] == ["ai_domain"]
    assert listed.total_size == 2
    rest = await stub.ListDomains(pb.ListDomainsRequest(page_token=listed.next_page_token))
    assert [d.domain_id for d in rest.domains] == ["memory_domain"]
    assert rest.next_page_token == ""

    cap_map = await stub.GetCapabilityMap(pb.GetCapabilityMapRequest())
    assert {k: list(v.domain_ids) for k, v in cap_map.capabilities.items()} == {
        "chat": ["ai_domain"],
        "ml": ["ai_domain"],
        "prediction": ["ai_domain"],
        "memory": ["memory_domain"],
    }

    found = await stub.FindByCapability(pb.FindByCapabilityRequest(capability="ml"))
    assert [r.domain.domain_id for r in found.domains] == ["ai_domain"]
    assert 0 < found.domains[0].score <= 1

    stats = await stub.GetRegistryStats(pb.GetRegistryStatsRequest())
    assert stats.total_domains == 2
    assert stats.domains_by_status["HEALTHY"] == 2
    assert stats.revision == 2


async def test_heartbeat_records_metrics_and_deregister_removes(
    stub: registry_pb2_grpc.RegistryServiceStub,
) -> None:
    await stub.RegisterDomain(SEED_REGISTRATION)
    beat = await stub.Heartbeat(
        pb.HeartbeatRequest(
            domain_id="ai_domain",
            metrics=pb.DomainMetrics(load=0.5, latency_ms=20, success_rate=0.75),
            degraded=True,
        )
    )
    assert beat.domain.status == pb.DOMAIN_STATUS_DEGRADED
    assert beat.domain.metrics.success_rate == 0.75

    removed = await stub.DeregisterDomain(pb.DeregisterDomainRequest(domain_id="ai_domain"))
    assert removed.revision == 3
    await expect_error(
        stub.GetDomain(pb.GetDomainRequest(domain_id="ai_domain")), grpc.StatusCode.NOT_FOUND
    )


async def test_bad_input_is_invalid_argument_naming_the_field(
    stub: registry_pb2_grpc.RegistryServiceStub,
) -> None:
    error = await expect_error(
        stub.RegisterDomain(pb.RegisterDomainRequest(domain_id="ai domain", port=1)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert error.details().startswith("domain_id:")
    status = rpc_status.from_call(error)
    assert status is not None
    assert any(d.type_url.endswith("google.rpc.BadRequest") for d in status.details)

    cases = [
        (stub.RegisterDomain(pb.RegisterDomainRequest(domain_id="a", port=0)), "port:"),
        (
            stub.RegisterDomain(
                pb.RegisterDomainRequest(
                    domain_id="a", port=1, lease_ttl=duration_pb2.Duration(seconds=7200)
                )
            ),
            "lease_ttl:",
        ),
        (stub.ListDomains(pb.ListDomainsRequest(page_size=5000)), "page_size:"),
        (stub.ListDomains(pb.ListDomainsRequest(page_token="garbage!")), "page_token:"),
        (stub.FindByCapability(pb.FindByCapabilityRequest(capability="")), "capability:"),
        (stub.WatchDomains(pb.WatchDomainsRequest(after_revision=-1)).read(), "after_revision:"),
    ]
    for call, prefix in cases:
        error = await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT)
        assert error.details().startswith(prefix)


async def test_unknown_ids_are_not_found(stub: registry_pb2_grpc.RegistryServiceStub) -> None:
    for call in (
        stub.GetDomain(pb.GetDomainRequest(domain_id="ghost")),
        stub.Heartbeat(pb.HeartbeatRequest(domain_id="ghost")),
        stub.DeregisterDomain(pb.DeregisterDomainRequest(domain_id="ghost")),
    ):
        error = await expect_error(call, grpc.StatusCode.NOT_FOUND)
        assert "ghost" in error.details()


async def test_lease_expiry_runs_in_the_service(
    registry_server: RunningRegistry,
    clock: ManualClock,
    stub: registry_pb2_grpc.RegistryServiceStub,
) -> None:
    await stub.RegisterDomain(SEED_REGISTRATION)
    clock.advance(31)
    for _ in range(100):
        got = await stub.GetDomain(pb.GetDomainRequest(domain_id="ai_domain"))
        if got.domain.status == pb.DOMAIN_STATUS_UNHEALTHY:
            break
        await asyncio.sleep(0.05)
    assert got.domain.status == pb.DOMAIN_STATUS_UNHEALTHY
    found = await stub.FindByCapability(pb.FindByCapabilityRequest(capability="ml"))
    assert list(found.domains) == []


async def test_watch_streams_snapshot_then_changes_and_resumes(
    stub: registry_pb2_grpc.RegistryServiceStub,
) -> None:
    await stub.RegisterDomain(SEED_REGISTRATION)
    call = stub.WatchDomains(pb.WatchDomainsRequest())
    snapshot = await call.read()
    assert [c.kind for c in snapshot.changes] == [pb.CHANGE_KIND_SNAPSHOT]
    await stub.RegisterDomain(pb.RegisterDomainRequest(domain_id="b", port=2))
    change = await asyncio.wait_for(call.read(), 5)
    assert [(c.kind, c.domain.domain_id) for c in change.changes] == [
        (pb.CHANGE_KIND_REGISTERED, "b")
    ]
    call.cancel()

    # A client that saw revision 1 resumes and gets exactly what it missed.
    await stub.DeregisterDomain(pb.DeregisterDomainRequest(domain_id="b"))
    resumed = stub.WatchDomains(pb.WatchDomainsRequest(after_revision=1))
    replay = await resumed.read()
    assert not replay.reset
    assert [(c.revision, c.kind) for c in replay.changes] == [
        (2, pb.CHANGE_KIND_REGISTERED),
        (3, pb.CHANGE_KIND_REMOVED),
    ]
    resumed.cancel()


async def test_health_and_reflection_are_served(
    registry_server: RunningRegistry,
) -> None:
    health = health_pb2_grpc.HealthStub(registry_server.channel)
    for name in ("", SERVICE_NAME):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    await expect_error(
        health.Check(health_pb2.HealthCheckRequest(service="nope")), grpc.StatusCode.NOT_FOUND
    )


async def test_domains_survive_a_server_restart(tmp_path: Path, clock: ManualClock) -> None:
    first = RegistryServer(registry_config(tmp_path), clock=clock)
    async with serving(first.config.server, first) as (_, chan):
        stub = registry_pb2_grpc.RegistryServiceStub(chan)
        await stub.RegisterDomain(SEED_REGISTRATION)
        await stub.Heartbeat(
            pb.HeartbeatRequest(
                domain_id="ai_domain", metrics=pb.DomainMetrics(load=0.4, success_rate=1)
            )
        )

    second = RegistryServer(registry_config(tmp_path), clock=clock)
    async with serving(second.config.server, second) as (_, chan):
        stub = registry_pb2_grpc.RegistryServiceStub(chan)
        got = await stub.GetDomain(pb.GetDomainRequest(domain_id="ai_domain"))
        assert got.domain.metrics.load == pytest.approx(0.4)
        assert got.domain.status == pb.DOMAIN_STATUS_HEALTHY
        stats = await stub.GetRegistryStats(pb.GetRegistryStatsRequest())
        assert stats.revision == 1
