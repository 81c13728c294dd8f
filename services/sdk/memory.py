"""`ctx.memory`: the shared memory, as seen by one domain.

A typed facade over `grace.memory.v1.SharedMemoryService` that always acts as the domain
(it is the `domain_id` of every contribution, verdict and application). Peer failures come
back as Grace errors, so an action that lets them propagate fails with a meaningful status:
UNAVAILABLE while the memory is down or not configured (retryable), NOT_FOUND for an
unknown contribution, PERMISSION_DENIED for retracting another domain's contribution,
FAILED_PRECONDITION for anything else the memory refused.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from grace.memory.v1 import memory_pb2, memory_pb2_grpc
from services.common.errors import (
    FailedPrecondition,
    GraceError,
    NotFound,
    PermissionDenied,
    Unavailable,
)

_REQUEST_ID_NAMESPACE = uuid.UUID("0d6c2f0e-3b7e-4f5e-8c1d-6a4b9e2f7c15")
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}
DEFAULT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Knowledge:
    """One contribution of the shared memory.

    Attributes:
        id: Contribution id.
        domain_id: Author.
        contribution_type: Kind, for example "insight".
        content: The knowledge.
        tags: Labels.
        confidence: Current confidence in [0, 1].
        verifications: Domains vouching for it.
        disputes: Domains disputing it.
        relevance: Text relevance of a query match (0 outside queries).
        score: relevance * confidence for a query match (0 outside queries).
        retracted: True once its author retracted it (only `get` and `retract` return
            retracted knowledge; queries never do).
    """

    id: str
    domain_id: str
    contribution_type: str
    content: dict[str, Any]
    tags: tuple[str, ...]
    confidence: float
    verifications: int = 0
    disputes: int = 0
    relevance: float = 0.0
    score: float = 0.0
    retracted: bool = False

    @classmethod
    def from_proto(
        cls, c: memory_pb2.Contribution, relevance: float = 0.0, score: float = 0.0
    ) -> Knowledge:
        """Builds it from the wire form."""
        return cls(
            id=c.contribution_id,
            domain_id=c.domain_id,
            contribution_type=c.contribution_type,
            content=json_format.MessageToDict(c.content),
            tags=tuple(c.tags),
            confidence=c.confidence,
            verifications=c.verifications,
            disputes=c.disputes,
            relevance=relevance,
            score=score,
            retracted=c.retracted,
        )


class MemoryClient:
    """The shared memory, acting as `domain_id`.

    Args:
        domain_id: The domain every write is made as.
        channel: Channel to the memory service; None when the memory is not configured.
        scope_key: Idempotency key of the current call; writes derive their request ids
            from it so a call that runs again does not write twice.
        timeout_s: Deadline of each call.
    """

    def __init__(
        self,
        domain_id: str,
        channel: grpc.aio.Channel | None,
        *,
        scope_key: str = "",
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.domain_id = domain_id
        self._channel = channel
        self._stub = memory_pb2_grpc.SharedMemoryServiceStub(channel) if channel else None
        self._scope_key = scope_key
        self._writes = 0
        self.timeout_s = timeout_s

    @property
    def available(self) -> bool:
        """True when a shared memory is configured (it may still be down)."""
        return self._stub is not None

    def scoped(self, key: str) -> MemoryClient:
        """A client for one call, deriving request ids from its idempotency key."""
        return MemoryClient(self.domain_id, self._channel, scope_key=key, timeout_s=self.timeout_s)

    async def contribute(
        self,
        contribution_type: str,
        content: Mapping[str, Any],
        *,
        tags: Sequence[str] = (),
        confidence: float | None = None,
        request_id: str = "",
    ) -> Knowledge:
        """Shares knowledge; returns it as stored.

        Args:
            contribution_type: Kind, for example "insight" or "successful_patterns".
            content: The knowledge (JSON object).
            tags: Labels for filtering.
            confidence: Initial confidence in [0, 1]; None uses the memory's default.
            request_id: Makes retries safe; derived from the call's idempotency key when
                empty and the call has one.
        """
        request = memory_pb2.ContributeRequest(
            domain_id=self.domain_id,
            contribution_type=contribution_type,
            content=_struct(content),
            tags=list(tags),
            request_id=request_id or self._next_request_id("contribute"),
        )
        if confidence is not None:
            request.initial_confidence = confidence
        response = await self._call("Contribute", request)
        return Knowledge.from_proto(response.contribution)

    async def query(
        self,
        query: str,
        *,
        min_confidence: float = 0.0,
        contribution_type: str = "",
        domain_id: str = "",
        tags: Sequence[str] = (),
        limit: int = 10,
    ) -> list[Knowledge]:
        """Searches the collective; best matches (relevance times confidence) first."""
        request = memory_pb2.QueryRequest(
            query=query,
            min_confidence=min_confidence,
            contribution_type=contribution_type,
            domain_id=domain_id,
            tags=list(tags),
            page_size=limit,
        )
        response = await self._call("Query", request)
        return [
            Knowledge.from_proto(r.contribution, r.relevance, r.score) for r in response.results
        ]

    async def get(self, contribution_id: str) -> Knowledge:
        """One contribution."""
        request = memory_pb2.GetContributionRequest(contribution_id=contribution_id)
        response = await self._call("GetContribution", request, resource=contribution_id)
        return Knowledge.from_proto(response.contribution)

    async def verify(self, contribution_id: str, reason: str = "") -> Knowledge:
        """Vouches for another domain's contribution."""
        request = memory_pb2.VerifyRequest(
            contribution_id=contribution_id, domain_id=self.domain_id, reason=reason
        )
        response = await self._call("Verify", request, resource=contribution_id)
        return Knowledge.from_proto(response.contribution)

    async def dispute(self, contribution_id: str, reason: str) -> Knowledge:
        """Disputes another domain's contribution."""
        request = memory_pb2.DisputeRequest(
            contribution_id=contribution_id, domain_id=self.domain_id, reason=reason
        )
        response = await self._call("Dispute", request, resource=contribution_id)
        return Knowledge.from_proto(response.contribution)

    async def apply(
        self, contribution_id: str, *, success: bool, detail: str = "", request_id: str = ""
    ) -> Knowledge:
        """Reports that applying a contribution worked (`success`) or not."""
        request = memory_pb2.ApplyRequest(
            contribution_id=contribution_id,
            domain_id=self.domain_id,
            outcome=memory_pb2.OUTCOME_SUCCESS if success else memory_pb2.OUTCOME_FAILURE,
            detail=detail,
            request_id=request_id or self._next_request_id("apply"),
        )
        response = await self._call("Apply", request, resource=contribution_id)
        return Knowledge.from_proto(response.contribution)

    async def retract(
        self, contribution_id: str, reason: str, *, request_id: str = ""
    ) -> Knowledge:
        """Withdraws this domain's own contribution: it leaves every query, list and
        statistic of the memory. Safe to repeat (an already retracted contribution is
        returned as it is); another domain's contribution is PERMISSION_DENIED.

        Args:
            contribution_id: The contribution, written by this domain.
            reason: Why, for the audit (required).
            request_id: Recorded with the retraction; derived from the call's idempotency
                key when empty and the call has one.
        """
        request = memory_pb2.RetractRequest(
            contribution_id=contribution_id,
            domain_id=self.domain_id,
            reason=reason,
            request_id=request_id or self._next_request_id("retract"),
        )
        response = await self._call("Retract", request, resource=contribution_id)
        return Knowledge.from_proto(response.contribution)

    def _next_request_id(self, operation: str) -> str:
        if not self._scope_key:
            return ""
        self._writes += 1
        name = f"{self.domain_id}|{self._scope_key}|{operation}|{self._writes}"
        return str(uuid.uuid5(_REQUEST_ID_NAMESPACE, name))

    async def _call(self, method: str, request: Any, *, resource: str = "") -> Any:
        if self._stub is None:
            raise Unavailable("shared memory is not configured for this domain")
        try:
            return await getattr(self._stub, method)(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _translate(exc, method, resource) from exc


def _struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(dict(value))
    return struct


def _translate(exc: grpc.aio.AioRpcError, method: str, resource: str) -> GraceError:
    code, details = exc.code(), exc.details() or ""
    if code in _RETRYABLE:
        return Unavailable(f"shared memory {method}: {code.name}: {details}")
    if code == grpc.StatusCode.NOT_FOUND and resource:
        return NotFound("contribution", resource)
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(
            f"shared memory refused {method}: {details}", reason="MEMORY_PERMISSION_DENIED"
        )
    return FailedPrecondition(
        f"shared memory refused {method}: {code.name}: {details}",
        reason=f"MEMORY_{code.name}",
    )
