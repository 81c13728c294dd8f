"""The immune kernel over gRPC with real shared memory and governance servers and a
Guardian double: latency injected -> anomaly -> governance -> Heal -> outcome in memory."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from grace.domain.v1 import domain_pb2, domain_pb2_grpc
from grace.eventbus.v1 import event_pb2
from grace.guardian.v1 import guardian_pb2, guardian_pb2_grpc
from grace.kernels.governance.v1 import governance_pb2 as gov
from grace.kernels.governance.v1 import governance_pb2_grpc
from grace.kernels.immune.v1 import immune_pb2 as pb
from grace.kernels.immune.v1 import immune_pb2_grpc
from grace.memory.v1 import memory_pb2, memory_pb2_grpc
from services.common.errors import NotFound
from services.common.server import Service
from services.kernels.governance.config import GovernanceConfig
from services.kernels.governance.governance import GovernanceSettings
from services.kernels.governance.model import Mode
from services.kernels.governance.server import GovernanceServer
from services.kernels.immune.config import ImmuneConfig
from services.kernels.immune.detector import DetectorSettings
from services.kernels.immune.remediation import RemediationSettings
from services.kernels.immune.server import ImmuneServer
from services.memory.config import MemoryConfig
from services.memory.memory import MemorySettings
from services.memory.server import MemoryServer
from tests.support import eventually, server_config, serving


class Discard:
    async def publish(self, events: object) -> None:
        """Accepts and forgets: the bus is not under test here."""


class GuardianDouble(guardian_pb2_grpc.GuardianServiceServicer, Service):
    """A Guardian that supervises `components` and whose playbooks do as scripted."""

    def __init__(self, components: set[str], works: dict[str, bool]) -> None:
        self.components = components
        self.works = works
        self.healed: list[tuple[str, str]] = []

    def add_to_server(self, server: grpc.aio.Server) -> list[str]:
        guardian_pb2_grpc.add_GuardianServiceServicer_to_server(self, server)
        return [guardian_pb2.DESCRIPTOR.services_by_name["GuardianService"].full_name]

    async def GetComponent(
        self, request: guardian_pb2.GetComponentRequest, context: Any
    ) -> guardian_pb2.GetComponentResponse:
        if request.component_name not in self.components:
            raise NotFound("component", request.component_name)
        return guardian_pb2.GetComponentResponse(
            component=guardian_pb2.Component(name=request.component_name)
        )

    async def Heal(
        self, request: guardian_pb2.HealRequest, context: Any
    ) -> guardian_pb2.HealResponse:
        self.healed.append((request.component_name, request.playbook))
        ok = self.works.get(request.playbook, True)
        return guardian_pb2.HealResponse(
            component_name=request.component_name,
            playbook=request.playbook,
            success=ok,
            message="restarted" if ok else "still slow",
        )


class System:
    def __init__(self) -> None:
        self.immune: immune_pb2_grpc.ImmuneServiceStub
        self.immune_domain: domain_pb2_grpc.DomainServiceStub
        self.memory: memory_pb2_grpc.SharedMemoryServiceStub
        self.governance: governance_pb2_grpc.GovernanceServiceStub
        self.guardian: GuardianDouble


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[System]:
    out = System()
    out.guardian = GuardianDouble({"ai_domain"}, {"restart_component": True})
    memory = MemoryServer(
        MemoryConfig(
            server=server_config("memory", tmp_path),
            settings=MemorySettings(),
            relay_interval_s=0.05,
        ),
        publisher=Discard(),
    )
    governance = GovernanceServer(
        GovernanceConfig(
            server=server_config("governance", tmp_path),
            settings=GovernanceSettings(mode=Mode.ENFORCE),
        ),
        bus=Discard(),
        immutable_log=Discard(),
    )
    async with contextlib.AsyncExitStack() as stack:
        mem_server, mem_chan = await stack.enter_async_context(
            serving(server_config("memory", tmp_path), memory)
        )
        gov_server, gov_chan = await stack.enter_async_context(
            serving(server_config("governance", tmp_path), governance)
        )
        guard_server, _ = await stack.enter_async_context(
            serving(server_config("guardian", tmp_path), out.guardian)
        )
        config = ImmuneConfig(
            server=server_config("immune", tmp_path),
            detector=DetectorSettings(window=30, min_points=10),
            remediation=RemediationSettings(cooldown_s=0.0),
            guardian_address=guard_server.address,
            memory_address=mem_server.address,
            governance_address=gov_server.address,
            relay_interval_s=0.05,
        )
        _, imm_chan = await stack.enter_async_context(
            serving(config.server, ImmuneServer(config, bus=Discard()))
        )
        out.immune = immune_pb2_grpc.ImmuneServiceStub(imm_chan)
        out.immune_domain = domain_pb2_grpc.DomainServiceStub(imm_chan)
        out.memory = memory_pb2_grpc.SharedMemoryServiceStub(mem_chan)
        out.governance = governance_pb2_grpc.GovernanceServiceStub(gov_chan)
        yield out


def latency(*values: float) -> pb.ReportMetricsRequest:
    return pb.ReportMetricsRequest(
        points=[pb.MetricPoint(component="ai_domain", metric="latency_ms", value=v) for v in values]
    )


NORMAL = [20.0, 21.0, 19.0, 22.0, 20.0, 18.0, 21.0, 20.0, 19.0, 20.0, 21.0, 20.0]


async def playbook_record(system: System) -> memory_pb2.Contribution | None:
    listed = await system.memory.ListByDomain(
        memory_pb2.ListByDomainRequest(domain_id="immune", contribution_type="remediation_playbook")
    )
    return listed.contributions[0] if listed.contributions else None


async def test_injected_latency_is_healed_and_the_playbook_record_improves(system: System) -> None:
    quiet = await system.immune.ReportMetrics(latency(*NORMAL))
    assert list(quiet.anomalies) == []
    spiked = await system.immune.ReportMetrics(latency(900.0, 950.0, 1000.0))
    assert [a.kind for a in spiked.anomalies] == ["latency_ms_spike"]
    anomaly_id = spiked.anomalies[0].anomaly_id

    async def remediated() -> bool:
        got = await system.immune.GetAnomaly(pb.GetAnomalyRequest(anomaly_id=anomaly_id))
        return got.remediation.outcome == pb.REMEDIATION_OUTCOME_SUCCEEDED

    await eventually(remediated, every_s=0.05)
    assert system.guardian.healed == [("ai_domain", "restart_component")]
    record = await playbook_record(system)
    assert record is not None
    assert record.successful_applications == 1
    assert record.content.fields["playbook"].string_value == "restart_component"
    decisions = await system.governance.ListDecisions(gov.ListDecisionsRequest(actor="immune"))
    assert [d.action for d in decisions.decisions] == ["heal:restart_component"]
    assert decisions.decisions[0].verdict == gov.VERDICT_ALLOW
    stats = await system.immune.GetImmuneStats(pb.GetImmuneStatsRequest())
    assert stats.anomalies_by_kind == {"latency_ms_spike": 1}
    assert stats.remediations_by_outcome == {"REMEDIATION_OUTCOME_SUCCEEDED": 1}
    [book] = [p for p in stats.playbooks if p.playbook == "restart_component"]
    assert (book.successes, book.failures) == (1, 0)
    assert book.success_rate == pytest.approx(2 / 3)


async def test_a_governance_policy_stops_healing(system: System) -> None:
    await system.governance.CreatePolicy(
        gov.CreatePolicyRequest(
            policy=gov.Policy(
                policy_id="no-restarts",
                description="change freeze",
                action="heal:*",
                effect=gov.EFFECT_FORBID,
            )
        )
    )
    spiked = await system.immune.ReportMetrics(latency(*NORMAL, 900.0, 950.0, 1000.0))
    anomaly_id = spiked.anomalies[0].anomaly_id

    async def denied() -> bool:
        got = await system.immune.GetAnomaly(pb.GetAnomalyRequest(anomaly_id=anomaly_id))
        return got.remediation.outcome == pb.REMEDIATION_OUTCOME_DENIED

    await eventually(denied, every_s=0.05)
    got = await system.immune.GetAnomaly(pb.GetAnomalyRequest(anomaly_id=anomaly_id))
    assert "change freeze" in got.remediation.reason
    assert system.guardian.healed == []
    assert await playbook_record(system) is None


async def test_metrics_also_arrive_as_bus_events_and_bad_points_are_refused(
    system: System,
) -> None:
    data = struct_pb2.Struct()
    data.update({"component": "ai_domain", "latency_ms": 20.0, "error": False})
    answer = await system.immune_domain.DeliverEvent(
        domain_pb2.DeliverEventRequest(
            event=event_pb2.Event(id="e1", event_type="domain.call.completed", data=data)
        )
    )
    assert answer.outcome == domain_pb2.DELIVERY_OUTCOME_ACK
    baseline = await system.immune.GetBaseline(
        pb.GetBaselineRequest(component="ai_domain", metric="errors")
    )
    assert baseline.points == 1
    nothing = await system.immune_domain.DeliverEvent(
        domain_pb2.DeliverEventRequest(event=event_pb2.Event(id="e2", event_type="x"))
    )
    assert nothing.outcome == domain_pb2.DELIVERY_OUTCOME_ACK  # nothing to measure, done
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await system.immune.ReportMetrics(
            pb.ReportMetricsRequest(points=[pb.MetricPoint(component="", metric="m", value=1)])
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
