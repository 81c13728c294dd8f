"""A latency histogram with fixed bucket bounds, shared by whoever measures and whoever sums.

Every reporter (SDK domains, the orchestrator, the event bus) counts latencies in the same
buckets, so the immune kernel can add the counts of many reporters and intervals bucket by
bucket and still answer a percentile over the sum: percentiles of separate intervals cannot
be combined, bucket counts can. The bounds double from 0.25 ms to 65.5 s, so a percentile
read from the buckets is at most twice the true one (and never below it); the largest
latency seen is kept too, which bounds the answer when it falls in the last buckets.

`counts[i]` holds the latencies `BOUNDS_MS[i-1] < ms <= BOUNDS_MS[i]` (the first bucket
everything up to 0.25 ms); `counts[-1]` holds those above the last bound.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

BOUNDS_MS: tuple[float, ...] = tuple(0.25 * 2**i for i in range(19))  # 0.25 ms .. 65536 ms
BUCKETS = len(BOUNDS_MS) + 1


def _zeros() -> list[int]:
    return [0] * BUCKETS


@dataclass
class LatencyHistogram:
    """Counts of latencies per bucket, their sum and their maximum."""

    counts: list[int] = field(default_factory=_zeros)
    sum_ms: float = 0.0
    max_ms: float = 0.0

    @classmethod
    def of(cls, counts: Sequence[int], sum_ms: float, max_ms: float) -> LatencyHistogram:
        """A histogram from its parts (as reported); raises ValueError when they cannot be
        one (wrong number of buckets, a negative count, a sum or maximum not finite)."""
        if len(counts) != BUCKETS:
            raise ValueError(f"must have {BUCKETS} buckets, not {len(counts)}")
        if any(c < 0 for c in counts):
            raise ValueError("bucket counts must not be negative")
        if not (math.isfinite(sum_ms) and math.isfinite(max_ms)) or sum_ms < 0 or max_ms < 0:
            raise ValueError("sum and maximum must be finite and not negative")
        return cls(list(counts), sum_ms, max_ms)

    @property
    def count(self) -> int:
        """Latencies counted."""
        return sum(self.counts)

    @property
    def mean_ms(self) -> float:
        """Mean latency (0 when empty)."""
        n = self.count
        return self.sum_ms / n if n else 0.0

    def add(self, ms: float, times: int = 1) -> None:
        """Counts one latency, `times` times (negative ones as 0: a clock that stepped
        back). A batch whose items share one latency is counted in one call."""
        ms = max(0.0, ms)
        self.counts[bisect.bisect_left(BOUNDS_MS, ms)] += times
        self.sum_ms += ms * times
        self.max_ms = max(self.max_ms, ms)

    def merge(self, other: LatencyHistogram) -> None:
        """Adds another histogram's counts into this one."""
        for i, c in enumerate(other.counts):
            self.counts[i] += c
        self.sum_ms += other.sum_ms
        self.max_ms = max(self.max_ms, other.max_ms)

    def quantile_ms(self, q: float) -> float:
        """An upper bound of the q-quantile (nearest rank) of the counted latencies: the
        upper bound of the bucket holding it, or the maximum when that is smaller. 0 when
        empty."""
        n = self.count
        if not n:
            return 0.0
        rank = max(1, math.ceil(q * n))
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                bound = BOUNDS_MS[i] if i < len(BOUNDS_MS) else math.inf
                return min(bound, self.max_ms)
        return self.max_ms  # unreachable: seen ends at n >= rank
