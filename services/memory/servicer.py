"""gRPC adapter of the shared memory: proto in, core call, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
from google.protobuf import json_format, struct_pb2

from grace.memory.v1 import memory_pb2, memory_pb2_grpc
from services.common.pagination import encoded_size
from services.common.timestamps import to_timestamp
from services.memory.memory import SharedMemory
from services.memory.model import (
    Application,
    ChangeKind,
    Contribution,
    ContributorOrder,
    Hit,
    NewContribution,
    Outcome,
    Verdict,
    VerdictKind,
)

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

_OUTCOME_TO_PROTO = {
    Outcome.SUCCESS: memory_pb2.OUTCOME_SUCCESS,
    Outcome.FAILURE: memory_pb2.OUTCOME_FAILURE,
}
_OUTCOME_FROM_PROTO = {v: k for k, v in _OUTCOME_TO_PROTO.items()}
_VERDICT_TO_PROTO = {
    VerdictKind.VERIFIED: memory_pb2.VERDICT_KIND_VERIFIED,
    VerdictKind.DISPUTED: memory_pb2.VERDICT_KIND_DISPUTED,
}
_CHANGE_TO_PROTO = {
    ChangeKind.CONTRIBUTED: memory_pb2.CHANGE_KIND_CONTRIBUTED,
    ChangeKind.VERIFIED: memory_pb2.CHANGE_KIND_VERIFIED,
    ChangeKind.DISPUTED: memory_pb2.CHANGE_KIND_DISPUTED,
    ChangeKind.APPLIED: memory_pb2.CHANGE_KIND_APPLIED,
    ChangeKind.RETRACTED: memory_pb2.CHANGE_KIND_RETRACTED,
}
_ORDER_FROM_PROTO = {
    memory_pb2.CONTRIBUTOR_ORDER_UNSPECIFIED: ContributorOrder.COUNT,
    memory_pb2.CONTRIBUTOR_ORDER_COUNT: ContributorOrder.COUNT,
    memory_pb2.CONTRIBUTOR_ORDER_MEAN_CONFIDENCE: ContributorOrder.MEAN_CONFIDENCE,
}


def contribution_to_proto(c: Contribution) -> memory_pb2.Contribution:
    """The wire form of a contribution."""
    content = struct_pb2.Struct()
    content.update(c.content)
    message = memory_pb2.Contribution(
        contribution_id=c.contribution_id,
        domain_id=c.domain_id,
        contribution_type=c.contribution_type,
        content=content,
        tags=c.tags,
        initial_confidence=c.initial_confidence,
        confidence=c.confidence,
        verifications=c.evidence.verifications,
        disputes=c.evidence.disputes,
        successful_applications=c.evidence.successes,
        failed_applications=c.evidence.failures,
        created_at=to_timestamp(c.created_at),
        updated_at=to_timestamp(c.updated_at),
    )
    if c.retraction is not None:
        message.retracted = True
        message.retraction_reason = c.retraction.reason
        message.retracted_at.CopyFrom(to_timestamp(c.retraction.time))
    return message


def _verdict_to_proto(v: Verdict) -> memory_pb2.Verdict:
    return memory_pb2.Verdict(
        domain_id=v.domain_id,
        kind=_VERDICT_TO_PROTO[v.kind],
        reason=v.reason,
        time=to_timestamp(v.time),
    )


def _application_to_proto(a: Application) -> memory_pb2.Application:
    return memory_pb2.Application(
        application_id=a.application_id,
        domain_id=a.domain_id,
        outcome=_OUTCOME_TO_PROTO[a.outcome],
        detail=a.detail,
        time=to_timestamp(a.time),
    )


class MemoryServicer(memory_pb2_grpc.SharedMemoryServiceServicer):
    """Serves `grace.memory.v1.SharedMemoryService` over a `SharedMemory` core."""

    def __init__(self, memory: SharedMemory) -> None:
        self._memory = memory

    async def Contribute(
        self, request: memory_pb2.ContributeRequest, context: Context
    ) -> memory_pb2.ContributeResponse:
        contribution, created = await self._memory.contribute(
            NewContribution(
                domain_id=request.domain_id,
                contribution_type=request.contribution_type,
                content=json_format.MessageToDict(request.content),
                tags=tuple(request.tags),
                initial_confidence=(
                    request.initial_confidence if request.HasField("initial_confidence") else None
                ),
                request_id=request.request_id,
            )
        )
        return memory_pb2.ContributeResponse(
            contribution=contribution_to_proto(contribution), created=created
        )

    async def GetContribution(
        self, request: memory_pb2.GetContributionRequest, context: Context
    ) -> memory_pb2.GetContributionResponse:
        contribution, verdicts, applications = await self._memory.get(request.contribution_id)
        return memory_pb2.GetContributionResponse(
            contribution=contribution_to_proto(contribution),
            verdicts=[_verdict_to_proto(v) for v in verdicts],
            recent_applications=[_application_to_proto(a) for a in applications],
        )

    async def Query(
        self, request: memory_pb2.QueryRequest, context: Context
    ) -> memory_pb2.QueryResponse:
        hits, next_token = await self._memory.query(
            request.query,
            min_confidence=request.min_confidence,
            contribution_type=request.contribution_type,
            domain_id=request.domain_id,
            tags=list(request.tags),
            size=request.page_size,
            token=request.page_token,
            size_of=lambda hit: encoded_size(_result(hit)),
        )
        return memory_pb2.QueryResponse(
            results=[_result(h) for h in hits], next_page_token=next_token
        )

    async def Verify(
        self, request: memory_pb2.VerifyRequest, context: Context
    ) -> memory_pb2.VerifyResponse:
        contribution, changed = await self._memory.verify(
            request.contribution_id, request.domain_id, request.reason
        )
        return memory_pb2.VerifyResponse(
            contribution=contribution_to_proto(contribution), changed=changed
        )

    async def Dispute(
        self, request: memory_pb2.DisputeRequest, context: Context
    ) -> memory_pb2.DisputeResponse:
        contribution, changed = await self._memory.dispute(
            request.contribution_id, request.domain_id, request.reason
        )
        return memory_pb2.DisputeResponse(
            contribution=contribution_to_proto(contribution), changed=changed
        )

    async def Apply(
        self, request: memory_pb2.ApplyRequest, context: Context
    ) -> memory_pb2.ApplyResponse:
        contribution, application, created = await self._memory.apply(
            request.contribution_id,
            request.domain_id,
            _OUTCOME_FROM_PROTO.get(request.outcome),
            request.detail,
            request.request_id,
        )
        return memory_pb2.ApplyResponse(
            contribution=contribution_to_proto(contribution),
            application=_application_to_proto(application),
            created=created,
        )

    async def Retract(
        self, request: memory_pb2.RetractRequest, context: Context
    ) -> memory_pb2.RetractResponse:
        contribution, changed = await self._memory.retract(
            request.contribution_id, request.domain_id, request.reason, request.request_id
        )
        return memory_pb2.RetractResponse(
            contribution=contribution_to_proto(contribution), changed=changed
        )

    async def ListByDomain(
        self, request: memory_pb2.ListByDomainRequest, context: Context
    ) -> memory_pb2.ListByDomainResponse:
        items, next_token, total = await self._memory.list_by_domain(
            request.domain_id,
            request.contribution_type,
            request.page_size,
            request.page_token,
            size_of=lambda contribution: encoded_size(contribution_to_proto(contribution)),
        )
        return memory_pb2.ListByDomainResponse(
            contributions=[contribution_to_proto(c) for c in items],
            next_page_token=next_token,
            total_size=total,
        )

    async def TopContributors(
        self, request: memory_pb2.TopContributorsRequest, context: Context
    ) -> memory_pb2.TopContributorsResponse:
        order = _ORDER_FROM_PROTO.get(request.order_by, ContributorOrder.COUNT)
        contributors = await self._memory.top_contributors(order, request.limit)
        return memory_pb2.TopContributorsResponse(
            contributors=[
                memory_pb2.Contributor(
                    domain_id=c.domain_id,
                    contributions=c.contributions,
                    mean_confidence=c.mean_confidence,
                    verifications=c.verifications,
                    successful_applications=c.successful_applications,
                )
                for c in contributors
            ]
        )

    async def GetStats(
        self, request: memory_pb2.GetStatsRequest, context: Context
    ) -> memory_pb2.GetStatsResponse:
        stats = await self._memory.stats()
        return memory_pb2.GetStatsResponse(
            total_contributions=stats.total,
            contributions_by_type=stats.by_type,
            contributions_by_domain=stats.by_domain,
            verifications=stats.verifications,
            disputes=stats.disputes,
            successful_applications=stats.successes,
            failed_applications=stats.failures,
            mean_confidence=stats.mean_confidence,
            retracted_contributions=stats.retracted,
        )

    async def WatchContributions(
        self, request: memory_pb2.WatchContributionsRequest, context: Context
    ) -> AsyncIterator[memory_pb2.WatchContributionsResponse]:
        async for change in self._memory.watch(request.pattern):
            yield memory_pb2.WatchContributionsResponse(
                kind=_CHANGE_TO_PROTO[change.kind],
                contribution=contribution_to_proto(change.contribution),
                domain_id=change.actor,
            )


def _result(hit: Hit) -> memory_pb2.QueryResult:
    return memory_pb2.QueryResult(
        contribution=contribution_to_proto(hit.contribution),
        relevance=hit.relevance,
        score=hit.score,
    )
