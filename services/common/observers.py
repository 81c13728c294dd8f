"""Who watches whom in the health federation, and how many must agree.

Members are placed on a ring by a hash of their id (so neighbours do not follow naming
order), and each member observes the `k` members that follow it: every member then has
exactly `k` observers (all the others when the federation has `k` members or fewer), each
member sends `k` probes per interval whatever the size of the fleet, and every member and
the registry compute the same assignment from the same membership with no coordination.

`quorum` is the rule the registry applies before it declares a member down: a majority of
the suspect's observers and never fewer than `minimum` (2 by default), so one observer with
a bad link, or one busy watcher, never confirms anything alone.

`suspicion_timeout` is Lifeguard's shrinking suspicion timeout: how long one observer's
suspicion waits before it is reported as a confirmation, given how many of the suspect's
other observers suspect it too.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

DEFAULT_OBSERVERS = 3
MIN_QUORUM = 2
# Registration metadata a member sets so that others know it serves PeerHealthService.
MEMBER_METADATA_KEY = "federation"
MEMBER_METADATA_VALUE = "v1"


def _position(member_id: str) -> bytes:
    return hashlib.sha256(member_id.encode()).digest()


def ring(members: Iterable[str]) -> list[str]:
    """The members in ring order (by the SHA-256 of their id, ties by id)."""
    return sorted(set(members), key=lambda m: (_position(m), m))


def targets_of(member_id: str, members: Iterable[str], k: int = DEFAULT_OBSERVERS) -> list[str]:
    """The members `member_id` observes: the `k` that follow it on the ring (fewer when the
    federation is smaller). Empty when `member_id` is not a member."""
    order = ring(members)
    if member_id not in order or k <= 0:
        return []
    index = order.index(member_id)
    count = min(k, len(order) - 1)
    return [order[(index + step) % len(order)] for step in range(1, count + 1)]


def observers_of(member_id: str, members: Iterable[str], k: int = DEFAULT_OBSERVERS) -> list[str]:
    """The members that observe `member_id`: the `k` that precede it on the ring, sorted."""
    order = ring(members)
    if member_id not in order or k <= 0:
        return []
    index = order.index(member_id)
    count = min(k, len(order) - 1)
    return sorted(order[(index - step) % len(order)] for step in range(1, count + 1))


def quorum(observers: int, *, minimum: int = MIN_QUORUM, fixed: int = 0) -> int:
    """Distinct confirmations needed to declare a member with `observers` observers down.

    Args:
        observers: How many members observe the suspect.
        minimum: Never fewer than this many (2: one observer alone never decides).
        fixed: When > 0, this number instead of the majority (still at least `minimum`).
    """
    majority = observers // 2 + 1
    return max(minimum, fixed if fixed > 0 else majority)


def suspicion_timeout(
    confirmations: int, expected: int, minimum_s: float, maximum_s: float
) -> float:
    """How long a suspicion waits before it is confirmed, as in memberlist's Lifeguard.

    A lone suspicion waits `maximum_s`: the fault is most likely the observer's own link or
    load, and the suspect has the longest time to answer or refute. Each independent
    confirmation (another observer suspecting the same incarnation) shortens the wait on a
    log scale, reaching `minimum_s` once the `expected` confirmations arrived, so a real
    failure, which every observer sees, is confirmed fastest:

        timeout = max - (max - min) * log(confirmations + 1) / log(expected + 1)

    Args:
        confirmations: Other observers that suspect the target too (clamped to
            0..`expected`).
        expected: Confirmations that would make the suspicion certain: the suspect's other
            observers. With none expected, the timeout is `maximum_s`.
        minimum_s: The shortest timeout.
        maximum_s: The longest (a lone suspicion); never below `minimum_s`.
    """
    longest = max(minimum_s, maximum_s)
    if expected <= 0:
        return longest
    seen = min(max(confirmations, 0), expected)
    fraction = math.log(seen + 1) / math.log(expected + 1)
    return max(minimum_s, longest - (longest - minimum_s) * fraction)
