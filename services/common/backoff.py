"""Exponential backoff as one value: initial delay, growth factor, ceiling and jitter.

Every "wait a little longer after each failure" in Grace is a `Backoff`, so the rule is
written once: the delay after failure n (1-based) is `min(max_s, initial_s * factor**(n-1))`,
then, with jitter j, drawn uniformly from `[delay * (1 - j), delay]`. Jitter only ever
shortens a delay, so `max_s` stays a true ceiling and many clients that failed together
(one restarted peer) do not come back in lockstep.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Delays between attempts.

    Attributes:
        initial_s: Delay after the first failure.
        factor: Growth of the delay per failure (>= 1).
        max_s: Longest delay.
        jitter: Fraction (0-1) by which a delay may be randomly shortened.
    """

    initial_s: float
    factor: float = 2.0
    max_s: float = 30.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.initial_s < 0 or self.max_s < 0:
            raise ValueError("backoff delays must not be negative")
        if self.factor < 1:
            raise ValueError("backoff factor must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("backoff jitter must be between 0 and 1")

    def delay(self, failures: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after `failures` consecutive failures (1-based).

        Args:
            failures: Failures so far; values below 1 count as 1.
            rand: Uniform [0, 1) source for the jitter (injectable for tests).
        """
        exponent = max(0, failures - 1)
        try:
            base = min(self.max_s, self.initial_s * self.factor**exponent)
        except OverflowError:  # Only ever reached long after the ceiling.
            base = self.max_s
        if self.jitter:
            base *= 1 - self.jitter * rand()
        return base


class Retries:
    """Consecutive failures of one loop under a `Backoff`: `failed` counts one and returns
    how long to wait before the next attempt; `succeeded` starts over from the shortest.

    Args:
        backoff: The delays.
        rand: Uniform [0, 1) source for the jitter (injectable for tests).
    """

    def __init__(self, backoff: Backoff, rand: Callable[[], float] = random.random) -> None:
        self.backoff = backoff
        self.failures = 0
        self._rand = rand

    def failed(self) -> float:
        self.failures += 1
        return self.backoff.delay(self.failures, self._rand)

    def succeeded(self) -> None:
        self.failures = 0
