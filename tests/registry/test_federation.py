"""The registry's federation RPCs: suspicions, the quorum, refutation and their events."""

from __future__ import annotations

import grpc
import pytest

from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.observers import MEMBER_METADATA_KEY, MEMBER_METADATA_VALUE
from tests.registry.conftest import RunningRegistry

MEMBERS = ["alpha", "bravo", "charlie", "delta", "echo"]


async def register_members(stub: registry_pb2_grpc.RegistryServiceStub) -> None:
    for port, member in enumerate(MEMBERS, start=9100):
        await stub.RegisterDomain(
            registry_pb2.RegisterDomainRequest(
                domain_id=member,
                host="127.0.0.1",
                port=port,
                metadata={MEMBER_METADATA_KEY: MEMBER_METADATA_VALUE},
            )
        )


def report(
    observer: str, suspect: str, incarnation: int = 5, confirmed: bool = False
) -> registry_pb2.ReportSuspicionRequest:
    return registry_pb2.ReportSuspicionRequest(
        observer_id=observer, suspect_id=suspect, incarnation=incarnation, confirmed=confirmed
    )


async def outbox_types(registry_server: RunningRegistry) -> list[str]:
    pending = await registry_server.service.registry.store.outbox.pending(100)
    return [e.event_type for e in pending if not e.event_type.startswith("domain.registered")]


async def test_a_suspicion_lists_the_suspects_observers_and_the_majority_quorum(
    stub: registry_pb2_grpc.RegistryServiceStub, registry_server: RunningRegistry
) -> None:
    await register_members(stub)
    response = await stub.ReportSuspicion(report("alpha", "charlie"))
    suspicion = response.suspicion
    assert suspicion.state == registry_pb2.SUSPICION_STATE_SUSPECTED
    assert list(suspicion.suspecting) == ["alpha"]
    assert len(suspicion.observers) == 3
    assert suspicion.quorum == 2
    listed = await stub.ListSuspicions(registry_pb2.ListSuspicionsRequest())
    assert [s.suspect_id for s in listed.suspicions] == ["charlie"]
    assert await outbox_types(registry_server) == ["domain.suspected"]


async def test_one_observer_alone_never_confirms_a_domain_down(
    stub: registry_pb2_grpc.RegistryServiceStub, registry_server: RunningRegistry
) -> None:
    await register_members(stub)
    for _ in range(3):
        response = await stub.ReportSuspicion(report("alpha", "charlie", confirmed=True))
    assert response.suspicion.state == registry_pb2.SUSPICION_STATE_SUSPECTED
    assert list(response.suspicion.confirming) == ["alpha"]
    assert "domain.down_confirmed" not in await outbox_types(registry_server)


async def test_two_observers_confirm_then_a_refutation_announces_the_recovery(
    stub: registry_pb2_grpc.RegistryServiceStub, registry_server: RunningRegistry
) -> None:
    await register_members(stub)
    await stub.ReportSuspicion(report("alpha", "charlie", confirmed=True))
    response = await stub.ReportSuspicion(report("bravo", "charlie", confirmed=True))
    assert response.suspicion.state == registry_pb2.SUSPICION_STATE_CONFIRMED_DOWN
    assert list(response.suspicion.confirming) == ["alpha", "bravo"]
    assert response.suspicion.HasField("confirmed_at")

    stale = await stub.Refute(registry_pb2.RefuteRequest(domain_id="charlie", incarnation=5))
    assert not stale.cleared
    refuted = await stub.Refute(registry_pb2.RefuteRequest(domain_id="charlie", incarnation=6))
    assert refuted.cleared
    assert refuted.recovered
    assert refuted.incarnation == 6
    listed = await stub.ListSuspicions(registry_pb2.ListSuspicionsRequest())
    assert list(listed.suspicions) == []
    assert await outbox_types(registry_server) == [
        "domain.suspected",
        "domain.down_confirmed",
        "domain.recovered",
    ]
    pending = await registry_server.service.registry.store.outbox.pending(100)
    confirmed = next(e for e in pending if e.event_type == "domain.down_confirmed")
    assert confirmed.data["confirming"] == ["alpha", "bravo"]
    assert confirmed.subject == "charlie"

    late = await stub.ReportSuspicion(report("delta", "charlie", incarnation=5, confirmed=True))
    assert not late.HasField("suspicion")
    assert late.current_incarnation == 6


async def test_a_refuted_suspicion_is_announced_as_refuted_not_recovered(
    stub: registry_pb2_grpc.RegistryServiceStub, registry_server: RunningRegistry
) -> None:
    await register_members(stub)
    await stub.ReportSuspicion(report("alpha", "charlie"))
    refuted = await stub.Refute(registry_pb2.RefuteRequest(domain_id="charlie", incarnation=9))
    assert refuted.cleared
    assert not refuted.recovered
    assert await outbox_types(registry_server) == [
        "domain.suspected",
        "domain.suspicion_refuted",
    ]


@pytest.mark.parametrize(
    ("request_", "code", "field"),
    [
        (report("alpha", "alpha"), grpc.StatusCode.INVALID_ARGUMENT, "observer_id"),
        (report("", "alpha"), grpc.StatusCode.INVALID_ARGUMENT, "observer_id"),
        (report("alpha", "nobody"), grpc.StatusCode.NOT_FOUND, "nobody"),
        (report("alpha", "bravo", incarnation=-1), grpc.StatusCode.INVALID_ARGUMENT, "incarnation"),
    ],
)
async def test_bad_reports_are_refused_with_the_field_named(
    stub: registry_pb2_grpc.RegistryServiceStub,
    request_: registry_pb2.ReportSuspicionRequest,
    code: grpc.StatusCode,
    field: str,
) -> None:
    await register_members(stub)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.ReportSuspicion(request_)
    assert raised.value.code() == code
    assert field in (raised.value.details() or "")


async def test_a_removed_domain_takes_its_suspicion_with_it(
    stub: registry_pb2_grpc.RegistryServiceStub,
) -> None:
    await register_members(stub)
    await stub.ReportSuspicion(report("alpha", "charlie"))
    await stub.DeregisterDomain(registry_pb2.DeregisterDomainRequest(domain_id="charlie"))
    listed = await stub.ListSuspicions(registry_pb2.ListSuspicionsRequest())
    assert list(listed.suspicions) == []
