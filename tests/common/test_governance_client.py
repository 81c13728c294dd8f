"""What the governance client decides when governance answers without a decision."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from grace.kernels.governance.v1 import governance_pb2 as pb
from grace.kernels.governance.v1 import governance_pb2_grpc
from services.common.governance_client import GovernanceClient
from services.common.outbox import OutboxEvent
from services.common.server import GraceServer, Service
from services.kernels.governance.config import GovernanceConfig
from services.kernels.governance.governance import GovernanceSettings
from services.kernels.governance.model import Mode
from services.kernels.governance.server import GovernanceServer
from tests.support import free_port, server_config, serving

# Longer than any actor governance accepts: Evaluate answers INVALID_ARGUMENT.
INVALID_ACTOR = "user:" + "m" * 1000


class Discard:
    async def publish(self, events: list[OutboxEvent]) -> None:
        """The bus and the log are not under test here."""


@pytest.fixture
async def governance(tmp_path: Path) -> AsyncIterator[str]:
    config = GovernanceConfig(
        server=server_config("governance", tmp_path),
        settings=GovernanceSettings(mode=Mode.ENFORCE),
    )
    service = GovernanceServer(config, bus=Discard(), immutable_log=Discard())
    async with serving(config.server, service) as (server, _):
        yield server.address


class NoVerdict(governance_pb2_grpc.GovernanceServiceServicer):
    """A governance that answers Evaluate with an empty reply, allowed=True and no verdict."""

    async def Evaluate(self, request: pb.EvaluateRequest, context: Any) -> pb.EvaluateResponse:
        return pb.EvaluateResponse(allowed=True)


class NoVerdictService(Service):
    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        governance_pb2_grpc.add_GovernanceServiceServicer_to_server(NoVerdict(), server)
        return [pb.DESCRIPTOR.services_by_name["GovernanceService"].full_name]


@contextlib.asynccontextmanager
async def no_verdict_governance() -> AsyncIterator[str]:
    # Served by the one bootstrap, so it speaks TLS with the test PKI like every server.
    async with GraceServer(
        server_config("governance", Path("/nonexistent")), NoVerdictService()
    ) as server:
        yield server.address


@pytest.mark.parametrize(("risk", "allowed"), [("low", True), ("medium", False), ("high", False)])
async def test_in_enforce_mode_an_error_answer_is_a_deny_above_low_risk(
    governance: str, risk: str, allowed: bool
) -> None:
    client = GovernanceClient(governance, fallback_mode="enforce")
    try:
        decision = await client.check(INVALID_ACTOR, "POST:/x", risk_level=risk)
    finally:
        await client.close()
    assert decision.allowed is allowed
    assert decision.source == "error"
    assert "INVALID_ARGUMENT" in decision.reasons[0]
    [record] = client.fallback_records
    assert (record.kind, record.allowed) == ("error", allowed)


async def test_in_log_only_mode_an_error_answer_is_allowed_and_recorded_as_an_error(
    governance: str,
) -> None:
    seen: list[object] = []
    client = GovernanceClient(governance, fallback_mode="log_only", on_fallback=seen.append)
    try:
        decision = await client.check(INVALID_ACTOR, "POST:/x", risk_level="critical")
    finally:
        await client.close()
    assert decision.allowed
    assert decision.source == "error"
    [record] = client.fallback_records
    assert record.kind == "error"
    assert "INVALID_ARGUMENT" in record.error
    assert seen == [record]


async def test_a_reply_without_a_verdict_is_an_error_not_an_allow() -> None:
    async with no_verdict_governance() as address:
        client = GovernanceClient(address, fallback_mode="enforce")
        try:
            decision = await client.check("alice", "POST:/x", risk_level="medium")
        finally:
            await client.close()
    assert not decision.allowed
    assert decision.source == "error"
    assert "no verdict" in decision.reasons[0]


async def test_unavailability_still_fails_closed_only_at_the_configured_level() -> None:
    client = GovernanceClient(f"127.0.0.1:{free_port()}", fallback_mode="enforce", deadline_s=0.5)
    try:
        medium = await client.check("alice", "POST:/x", risk_level="medium")
    finally:
        await client.close()
    assert medium.allowed
    assert medium.source == "fallback"
    assert client.fallback_records[0].kind == "unavailable"
