"""gRPC adapter of the learning kernel: proto in, core call, proto out."""

from __future__ import annotations

import math
from typing import Any, TypeAlias

import grpc

from grace.kernels.learning.v1 import learning_pb2 as pb
from grace.kernels.learning.v1 import learning_pb2_grpc
from services.common.errors import InvalidArgument, NotFound
from services.common.pagination import decode_token, encode_token, page_size
from services.common.timestamps import to_timestamp
from services.kernels.domain import dict_to_struct
from services.kernels.learning.detector import Outcome
from services.kernels.learning.learning import MAX_CAPABILITIES, Learning

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

MAX_BATCH = 10_000
MAX_NAME = 128


def pattern_to_proto(row: dict[str, Any]) -> pb.Pattern:
    """The wire form of a stored pattern."""
    record = row["record"]
    return pb.Pattern(
        pattern_id=row["pattern_id"],
        domain_id=record["domain"],
        action=record["action"],
        kind=record["kind"],
        factor=record["factor"],
        bucket=record["bucket"],
        summary=record["summary"],
        recommendation=record["recommendation"],
        evidence=dict_to_struct(record["evidence"]),
        contribution_type=record["contribution_type"],
        contribution_id=row["contribution_id"],
        first_found=to_timestamp(row["first_found"]),
        last_found=to_timestamp(row["last_found"]),
    )


def _name(value: str, field: str) -> str:
    if not 0 < len(value) <= MAX_NAME:
        raise InvalidArgument(field, f"must be 1-{MAX_NAME} characters")
    return value


def outcomes_from_request(request: pb.IngestOutcomesRequest) -> list[Outcome]:
    """The batch's outcomes, validated; the whole batch is refused on the first bad one."""
    domain = request.domain_id
    found = []
    for i, o in enumerate(request.outcomes):
        where = f"outcomes[{i}]"
        if not 0 < len(o.action) <= MAX_NAME:
            raise InvalidArgument(f"{where}.action", f"must be 1-{MAX_NAME} characters")
        if not (math.isfinite(o.latency_ms) and o.latency_ms >= 0):
            raise InvalidArgument(f"{where}.latency_ms", "must be a finite number >= 0")
        if not 0 <= o.hour <= 23:
            raise InvalidArgument(f"{where}.hour", "must be 0-23")
        if not 0 <= o.weekday <= 6:
            raise InvalidArgument(f"{where}.weekday", "must be 0 (Monday) to 6 (Sunday)")
        if o.input_size < 0 or o.in_flight < 0 or o.sequence < 0 or o.attempt < 0:
            raise InvalidArgument(where, "input_size, in_flight, sequence and attempt must be >= 0")
        found.append(
            Outcome(
                domain,
                o.action,
                o.success,
                o.latency_ms,
                o.input_size,
                o.hour,
                o.weekday,
                o.attempt or 1,
                o.in_flight,
                o.sequence,
            )
        )
    return found


class LearningServicer(learning_pb2_grpc.LearningServiceServicer):
    """Serves `grace.kernels.learning.v1.LearningService` over the `Learning` core."""

    def __init__(self, learning: Learning) -> None:
        self._learning = learning

    async def IngestOutcomes(
        self, request: pb.IngestOutcomesRequest, context: Context
    ) -> pb.IngestOutcomesResponse:
        _name(request.domain_id, "domain_id")
        _name(request.batch_id, "batch_id")
        if len(request.outcomes) > MAX_BATCH:
            raise InvalidArgument("outcomes", f"must hold at most {MAX_BATCH} outcomes")
        if len(request.capabilities) > MAX_CAPABILITIES:
            raise InvalidArgument("capabilities", f"must hold at most {MAX_CAPABILITIES}")
        for i, capability in enumerate(request.capabilities):
            _name(capability, f"capabilities[{i}]")
        outcomes = outcomes_from_request(request)
        accepted, duplicate = await self._learning.ingest(
            request.domain_id, request.batch_id, outcomes, list(request.capabilities)
        )
        return pb.IngestOutcomesResponse(accepted=accepted, duplicate=duplicate)

    async def ListPatterns(
        self, request: pb.ListPatternsRequest, context: Context
    ) -> pb.ListPatternsResponse:
        for value, field in ((request.domain_id, "domain_id"), (request.kind, "kind")):
            if len(value) > MAX_NAME:
                raise InvalidArgument(field, f"must be at most {MAX_NAME} characters")
        size = page_size(request.page_size)
        position = decode_token(request.page_token) or {}
        offset = position.get("offset", 0)
        if not isinstance(offset, int) or offset < 0:
            raise InvalidArgument("page_token", "is not a token this service issued")
        rows = await self._learning.store.list(
            domain_id=request.domain_id, kind=request.kind, offset=offset, limit=size + 1
        )
        more = len(rows) > size
        return pb.ListPatternsResponse(
            patterns=[pattern_to_proto(r) for r in rows[:size]],
            next_page_token=encode_token({"offset": offset + size}) if more else "",
        )

    async def GetPattern(
        self, request: pb.GetPatternRequest, context: Context
    ) -> pb.GetPatternResponse:
        _name(request.pattern_id, "pattern_id")
        row = await self._learning.store.get(request.pattern_id)
        if row is None:
            raise NotFound("pattern", request.pattern_id)
        return pb.GetPatternResponse(pattern=pattern_to_proto(row))

    async def Analyze(self, request: pb.AnalyzeRequest, context: Context) -> pb.AnalyzeResponse:
        new, found = await self._learning.analyze()
        stored = [await self._learning.store.get(r["pattern_id"]) or r for r in new]
        return pb.AnalyzeResponse(new_patterns=[pattern_to_proto(r) for r in stored], found=found)

    async def GetLearningStats(
        self, request: pb.GetLearningStatsRequest, context: Context
    ) -> pb.GetLearningStatsResponse:
        return pb.GetLearningStatsResponse(**await self._learning.stats())
