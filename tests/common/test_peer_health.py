"""PeerHealthService on a real server: pings, refutation on a ping, indirect probes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest

from grace.domain.v1 import peer_health_pb2, peer_health_pb2_grpc
from services.common.config import ConfigError
from services.common.peer_health import PeerHealth, PeerHealthSettings
from services.common.server import Service
from services.common.timestamps import to_duration
from tests.support import UNREACHABLE, server_config, serving


class MemberService(Service):
    """Serves one member's PeerHealthService and nothing else (no probing loop)."""

    def __init__(self, member_id: str) -> None:
        self.peer_health = PeerHealth(member_id)

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        return self.peer_health.add_to_server(server)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        await self.peer_health.stop()


@pytest.fixture
async def member(
    tmp_path: Path,
) -> AsyncIterator[tuple[MemberService, peer_health_pb2_grpc.PeerHealthServiceAsyncStub, str]]:
    service = MemberService("alpha")
    config = server_config("alpha", tmp_path)
    async with serving(config, service) as (server, chan):
        yield service, peer_health_pb2_grpc.PeerHealthServiceStub(chan), server.address


async def test_a_ping_answers_with_the_members_incarnation(member: tuple) -> None:
    service, stub, _ = member
    response = await stub.Ping(peer_health_pb2.PingRequest(domain_id="alpha", from_id="bravo"))
    assert response.domain_id == "alpha"
    assert response.incarnation == service.peer_health.member.incarnation


async def test_a_ping_that_carries_a_suspicion_raises_the_incarnation_above_it(
    member: tuple,
) -> None:
    service, stub, _ = member
    current = service.peer_health.member.incarnation
    response = await stub.Ping(
        peer_health_pb2.PingRequest(domain_id="alpha", suspected_incarnation=current + 5)
    )
    assert response.incarnation == current + 6
    stale = await stub.Ping(
        peer_health_pb2.PingRequest(domain_id="alpha", suspected_incarnation=current)
    )
    assert stale.incarnation == current + 6


async def test_a_ping_meant_for_another_member_is_refused(member: tuple) -> None:
    _, stub, _ = member
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Ping(peer_health_pb2.PingRequest(domain_id="bravo"))
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_an_indirect_probe_reports_whether_the_target_answered(member: tuple) -> None:
    service, stub, address = member
    reached = await stub.ProbeOnBehalf(
        peer_health_pb2.ProbeOnBehalfRequest(
            domain_id="alpha", target_id="alpha", target_address=address, from_id="bravo"
        )
    )
    assert reached.reachable
    assert reached.incarnation == service.peer_health.member.incarnation
    missed = await stub.ProbeOnBehalf(
        peer_health_pb2.ProbeOnBehalfRequest(
            domain_id="alpha",
            target_id="charlie",
            target_address=UNREACHABLE,
            timeout=to_duration(0.2),
        )
    )
    assert not missed.reachable
    assert "charlie" in missed.error


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (
            peer_health_pb2.ProbeOnBehalfRequest(domain_id="alpha", target_address="x:1"),
            "target_id",
        ),
        (peer_health_pb2.ProbeOnBehalfRequest(domain_id="alpha", target_id="b"), "target_address"),
        (
            peer_health_pb2.ProbeOnBehalfRequest(
                domain_id="alpha", target_id="b", target_address="x:1", timeout=to_duration(60)
            ),
            "timeout",
        ),
    ],
)
async def test_bad_indirect_probes_are_refused_with_the_field_named(
    member: tuple, request_: peer_health_pb2.ProbeOnBehalfRequest, field: str
) -> None:
    _, stub, _ = member
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.ProbeOnBehalf(request_)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (raised.value.details() or "")


def test_the_suspicion_timeout_runs_from_the_maximum_down_to_the_minimum_set_in_env() -> None:
    default = PeerHealthSettings.from_env({}).member
    assert (default.suspicion_timeout_s, default.suspicion_max_timeout_s) == (2.0, 6.0)
    slow = PeerHealthSettings.from_env({"GRACE_FEDERATION_SUSPICION_TIMEOUT_S": "8"}).member
    assert (slow.suspicion_timeout_s, slow.suspicion_max_timeout_s) == (8.0, 8.0)
    with pytest.raises(ConfigError, match="GRACE_FEDERATION_SUSPICION_MAX_TIMEOUT_S"):
        PeerHealthSettings.from_env(
            {
                "GRACE_FEDERATION_SUSPICION_TIMEOUT_S": "4",
                "GRACE_FEDERATION_SUSPICION_MAX_TIMEOUT_S": "3",
            }
        )
