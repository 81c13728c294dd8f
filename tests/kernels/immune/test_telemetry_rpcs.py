"""ImmuneService's telemetry RPCs over gRPC: traffic reported with the metrics comes back as
the window's figures and the collaboration graph, for any authenticated reader."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from grace.kernels.immune.v1 import immune_pb2 as pb
from grace.kernels.immune.v1 import immune_pb2_grpc
from services.common.call_metrics import CallTallies, TrafficKind, traffic_tallies
from services.kernels.immune.config import ImmuneConfig
from services.kernels.immune.detector import DetectorSettings
from services.kernels.immune.remediation import RemediationSettings
from services.kernels.immune.server import ImmuneServer
from tests.support import server_config, serving, session_pki


class Discard:
    async def publish(self, events: object) -> None:
        """The bus is not under test here."""


@pytest.fixture
async def immune(tmp_path: Path) -> AsyncIterator[tuple[str, immune_pb2_grpc.ImmuneServiceStub]]:
    server = ImmuneServer(
        ImmuneConfig(
            server=server_config("immune", tmp_path),
            detector=DetectorSettings(),
            remediation=RemediationSettings(),
            remediate=False,
        ),
        bus=Discard(),
    )
    async with serving(server.config.server, server) as (running, chan):
        yield running.address, immune_pb2_grpc.ImmuneServiceStub(chan)


def report() -> pb.ReportMetricsRequest:
    tallies = CallTallies()
    for ms in (5, 6, 7):
        tallies.record("data_domain", ms / 1000, error=False, caller="orchestrator")
    tallies.record("ai_domain", 0.040, error=True, caller="orchestrator")
    tallies.record("ai_domain", 0.010, error=False, caller="user:alice")
    tallies.record_edge(TrafficKind.PUBLISH, "data_domain", "document.ingested", 0.001, error=False)
    tallies.record_edge(TrafficKind.DELIVERY, "data_domain", "ai_domain", 0.003, error=False)
    return pb.ReportMetricsRequest(traffic=traffic_tallies(tallies.drain_traffic()))


async def test_reported_traffic_comes_back_as_figures_and_graph_for_a_reader(
    immune: tuple[str, immune_pb2_grpc.ImmuneServiceStub],
) -> None:
    address, stub = immune
    await stub.ReportMetrics(report())
    async with session_pki().channel_as(address, "rita", "reader") as chan:
        reader = immune_pb2_grpc.ImmuneServiceStub(chan)
        t = await reader.GetTelemetry(pb.GetTelemetryRequest(window_seconds=60))
        g = await reader.GetCollaborationGraph(pb.GetCollaborationGraphRequest())
        calls = await reader.GetCollaborationGraph(
            pb.GetCollaborationGraphRequest(kind=pb.TRAFFIC_KIND_DELIVERY)
        )
    assert (t.total_requests, t.errors, t.cross_domain_calls) == (5, 1, 4)
    assert (t.events_published, t.events_delivered, t.cross_domain_deliveries) == (1, 1, 1)
    assert t.collaboration_rate == pytest.approx(5 / 6)
    assert t.p99_latency_ms == 40.0
    assert t.window_end.seconds - t.window_start.seconds >= 60
    domains = {d.domain_id: d for d in t.domains}
    assert (
        domains["ai_domain"].health == pb.DOMAIN_HEALTH_DEGRADED
    )  # 1 failed of 2 calls + 1 delivery
    assert domains["data_domain"].health == pb.DOMAIN_HEALTH_HEALTHY
    edges = {(e.kind, e.source, e.target): e for e in g.edges}
    assert edges[(pb.TRAFFIC_KIND_CALL, "orchestrator", "data_domain")].count == 3
    assert edges[(pb.TRAFFIC_KIND_PUBLISH, "data_domain", "document.ingested")].count == 1
    assert "orchestrator" in g.nodes
    assert [(e.source, e.target) for e in calls.edges] == [("data_domain", "ai_domain")]


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.GetTelemetryRequest(window_seconds=-1), "window_seconds"),
        (pb.GetTelemetryRequest(window_seconds=100_000), "window_seconds"),
        (pb.GetCollaborationGraphRequest(kind=99), "kind"),
    ],
)
async def test_a_window_or_kind_out_of_range_is_refused_naming_the_field(
    immune: tuple[str, immune_pb2_grpc.ImmuneServiceStub], request_: object, field: str
) -> None:
    _, stub = immune
    method = (
        stub.GetTelemetry
        if isinstance(request_, pb.GetTelemetryRequest)
        else stub.GetCollaborationGraph
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await method(request_)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (caught.value.details() or "")


async def test_malformed_traffic_is_refused_and_nothing_of_the_report_is_kept(
    immune: tuple[str, immune_pb2_grpc.ImmuneServiceStub],
) -> None:
    _, stub = immune
    good = report().traffic[0]
    short = pb.TrafficTally(kind=pb.TRAFFIC_KIND_CALL, source="a", target="b")
    short.latency.counts.extend([1, 2])
    for bad, field in (
        (
            pb.TrafficTally(kind=pb.TRAFFIC_KIND_UNSPECIFIED, target="b", latency=good.latency),
            "kind",
        ),
        (short, "latency"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ReportMetrics(pb.ReportMetricsRequest(traffic=[good, bad]))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"traffic[1].{field}" in (caught.value.details() or "")
    assert (await stub.GetTelemetry(pb.GetTelemetryRequest())).total_requests == 0


async def test_a_reader_may_not_report_traffic(
    immune: tuple[str, immune_pb2_grpc.ImmuneServiceStub],
) -> None:
    address, _ = immune
    async with session_pki().channel_as(address, "rita", "reader") as chan:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await immune_pb2_grpc.ImmuneServiceStub(chan).ReportMetrics(report())
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
