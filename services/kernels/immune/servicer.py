"""gRPC adapter of the immune kernel: proto in, core call, proto out."""

from __future__ import annotations

import time
from typing import Any, TypeAlias

import grpc

from grace.kernels.immune.v1 import immune_pb2 as pb
from grace.kernels.immune.v1 import immune_pb2_grpc
from services.common.pagination import encoded_size
from services.common.timestamps import from_timestamp, to_timestamp
from services.kernels.immune.immune import Immune
from services.kernels.immune.model import Anomaly, MetricPoint, Outcome, Remediation
from services.kernels.immune.telemetry import Edge, Graph, Telemetry
from services.kernels.immune.traffic import tally_of, traffic_key, traffic_kind

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

OUTCOME_TO_PROTO = {
    outcome: pb.RemediationOutcome.Value(f"REMEDIATION_OUTCOME_{outcome.name}")
    for outcome in Outcome
}


def anomaly_to_proto(anomaly: Anomaly) -> pb.Anomaly:
    """The wire form of an anomaly."""
    return pb.Anomaly(
        anomaly_id=anomaly.anomaly_id,
        component=anomaly.component,
        metric=anomaly.metric,
        kind=anomaly.kind,
        median=anomaly.median,
        mad=anomaly.mad,
        threshold=anomaly.threshold,
        evidence=[
            pb.EvidencePoint(value=e.value, score=e.score, time=to_timestamp(e.time))
            for e in anomaly.evidence
        ],
        detected_at=to_timestamp(anomaly.detected_at),
        remediation_id=anomaly.remediation_id,
    )


def remediation_to_proto(remediation: Remediation) -> pb.Remediation:
    """The wire form of a remediation."""
    return pb.Remediation(
        remediation_id=remediation.remediation_id,
        anomaly_id=remediation.anomaly_id,
        component=remediation.component,
        kind=remediation.kind,
        playbook=remediation.playbook,
        candidates=[
            pb.PlaybookScore(
                playbook=c.playbook, successes=c.successes, failures=c.failures, score=c.score
            )
            for c in remediation.candidates
        ],
        outcome=OUTCOME_TO_PROTO[remediation.outcome],
        reason=remediation.reason,
        governance_decision_id=remediation.governance_decision_id,
        started_at=to_timestamp(remediation.started_at),
        finished_at=to_timestamp(remediation.finished_at),
    )


def telemetry_to_proto(t: Telemetry) -> pb.GetTelemetryResponse:
    """The wire form of a window's figures."""
    return pb.GetTelemetryResponse(
        window_start=to_timestamp(t.window_start),
        window_end=to_timestamp(t.window_end),
        total_requests=t.total_requests,
        errors=t.errors,
        error_rate=t.error_rate,
        avg_latency_ms=t.avg_latency_ms,
        p99_latency_ms=t.p99_latency_ms,
        collaboration_rate=t.collaboration_rate,
        cross_domain_calls=t.cross_domain_calls,
        events_published=t.events_published,
        events_delivered=t.events_delivered,
        cross_domain_deliveries=t.cross_domain_deliveries,
        workflow_steps=t.workflow_steps,
        system_health=t.system_health,
        domains=[
            pb.DomainTelemetry(
                domain_id=d.domain_id,
                requests=d.requests,
                errors=d.errors,
                error_rate=d.error_rate,
                avg_latency_ms=d.avg_latency_ms,
                p99_latency_ms=d.p99_latency_ms,
                calls_made=d.calls_made,
                events_published=d.events_published,
                events_received=d.events_received,
                deliveries_failed=d.deliveries_failed,
                health=pb.DomainHealth.Value(d.health.value),
                open_anomalies=d.open_anomalies,
            )
            for d in t.domains
        ],
    )


def edge_to_proto(e: Edge) -> pb.CollaborationEdge:
    """The wire form of a graph edge."""
    return pb.CollaborationEdge(
        kind=e.kind.value,
        source=e.source,
        target=e.target,
        count=e.count,
        errors=e.errors,
        avg_latency_ms=e.avg_latency_ms,
        p99_latency_ms=e.p99_latency_ms,
    )


def graph_to_proto(g: Graph) -> pb.GetCollaborationGraphResponse:
    """The wire form of a collaboration graph."""
    return pb.GetCollaborationGraphResponse(
        window_start=to_timestamp(g.window_start),
        window_end=to_timestamp(g.window_end),
        nodes=g.nodes,
        edges=[edge_to_proto(e) for e in g.edges],
    )


class ImmuneServicer(immune_pb2_grpc.ImmuneServiceServicer):
    """Serves `grace.kernels.immune.v1.ImmuneService` over an `Immune` core."""

    def __init__(self, immune: Immune) -> None:
        self._immune = immune

    async def ReportMetrics(
        self, request: pb.ReportMetricsRequest, context: Context
    ) -> pb.ReportMetricsResponse:
        now = time.time()
        points = [
            MetricPoint(p.component, p.metric, p.value, from_timestamp(p.time) or now)
            for p in request.points
        ]
        traffic = [
            (
                traffic_key(i, t.kind, t.source, t.target),
                tally_of(i, t.latency.counts, t.latency.sum_ms, t.latency.max_ms, t.errors),
            )
            for i, t in enumerate(request.traffic)
        ]
        anomalies = await self._immune.report(points, traffic)
        return pb.ReportMetricsResponse(
            accepted=len(points), anomalies=[anomaly_to_proto(a) for a in anomalies]
        )

    async def ListAnomalies(
        self, request: pb.ListAnomaliesRequest, context: Context
    ) -> pb.ListAnomaliesResponse:
        page, token = await self._immune.list_anomalies(
            request.component,
            request.kind,
            request.page_size,
            request.page_token,
            size_of=lambda anomaly: encoded_size(anomaly_to_proto(anomaly)),
        )
        return pb.ListAnomaliesResponse(
            anomalies=[anomaly_to_proto(a) for a in page], next_page_token=token
        )

    async def GetAnomaly(
        self, request: pb.GetAnomalyRequest, context: Context
    ) -> pb.GetAnomalyResponse:
        anomaly, remediation = await self._immune.get_anomaly(request.anomaly_id)
        response = pb.GetAnomalyResponse(anomaly=anomaly_to_proto(anomaly))
        if remediation is not None:
            response.remediation.CopyFrom(remediation_to_proto(remediation))
        return response

    async def ListRemediations(
        self, request: pb.ListRemediationsRequest, context: Context
    ) -> pb.ListRemediationsResponse:
        page, token = await self._immune.list_remediations(
            request.component,
            request.page_size,
            request.page_token,
            size_of=lambda remediation: encoded_size(remediation_to_proto(remediation)),
        )
        return pb.ListRemediationsResponse(
            remediations=[remediation_to_proto(r) for r in page], next_page_token=token
        )

    async def GetBaseline(
        self, request: pb.GetBaselineRequest, context: Context
    ) -> pb.GetBaselineResponse:
        b = self._immune.baseline(request.component, request.metric)
        return pb.GetBaselineResponse(
            component=b.component,
            metric=b.metric,
            points=b.points,
            median=b.median,
            mad=b.mad,
            warmed_up=b.warmed_up,
            in_anomaly=b.in_anomaly,
            consecutive=b.consecutive,
        )

    async def GetImmuneStats(
        self, request: pb.GetImmuneStatsRequest, context: Context
    ) -> pb.GetImmuneStatsResponse:
        stats = await self._immune.stats()
        return pb.GetImmuneStatsResponse(
            series=stats.series,
            points=stats.points,
            anomalies=sum(stats.anomalies_by_kind.values()),
            anomalies_by_kind=stats.anomalies_by_kind,
            remediations_by_outcome={
                pb.RemediationOutcome.Name(OUTCOME_TO_PROTO[Outcome(k)]): n
                for k, n in stats.remediations_by_outcome.items()
            },
            playbooks=[
                pb.PlaybookStats(
                    kind=kind,
                    playbook=s.playbook,
                    successes=s.successes,
                    failures=s.failures,
                    success_rate=s.score,
                )
                for kind, s in stats.playbooks
            ],
            dry_run=stats.dry_run,
        )

    async def GetTelemetry(
        self, request: pb.GetTelemetryRequest, context: Context
    ) -> pb.GetTelemetryResponse:
        return telemetry_to_proto(self._immune.traffic.telemetry(request.window_seconds))

    async def GetCollaborationGraph(
        self, request: pb.GetCollaborationGraphRequest, context: Context
    ) -> pb.GetCollaborationGraphResponse:
        kind = traffic_kind("kind", request.kind) if request.kind else None
        return graph_to_proto(self._immune.traffic.graph(request.window_seconds, kind))
