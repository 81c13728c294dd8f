"""The trust scorer over gRPC: the trust kernel's score of an event's source domain."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc

from grace.kernels.trust.v1 import trust_pb2, trust_pb2_grpc
from services.common.action_peers import ActionFailed


class TrustClient:
    """`mesh.TrustScorer` over the trust kernel's `GetTrustScore`, each score reused for
    `cache_s` (a burst of events from one source asks once).

    Args:
        channel: Channel to the trust kernel.
        cache_s: How long a score is reused; 0 asks every time.
        timeout_s: Deadline of each call.
        clock: Injectable monotonic clock.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        cache_s: float = 5.0,
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stub = trust_pb2_grpc.TrustServiceStub(channel)
        self.cache_s = cache_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._cache: dict[str, tuple[float, float]] = {}

    async def score(self, domain_id: str) -> float:
        now = self._clock()
        cached = self._cache.get(domain_id)
        if cached is not None and now - cached[0] < self.cache_s:
            return cached[1]
        try:
            response = await self._stub.GetTrustScore(
                trust_pb2.GetTrustScoreRequest(domain_id=domain_id), timeout=self.timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                score = 0.0  # an unknown source has no trust
            else:
                raise ActionFailed(f"trust: {exc.code().name}: {exc.details()}") from exc
        else:
            score = float(response.score)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[domain_id] = (now, score)
        return score
