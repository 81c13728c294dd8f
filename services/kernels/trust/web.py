"""Trust paths through the web of certifications.

A path runs from a start domain (the asking domain, or a configured root) to the target
along certifications. Rules, in the spirit of PGP's web of trust:

- only valid certifications count (not signed by a since-revoked key);
- every hop but the last must be FULL (you pass trust on only through those you fully
  trust); the last hop may be FULL or PARTIAL; NONE is no edge;
- at most `max_depth` hops; a domain is trusted by itself (zero hops).

The search is breadth-first, so the shortest path is returned; ties break by domain id.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping

from services.kernels.trust.model import Level

Edges = Mapping[str, Mapping[str, Level]]


def find_path(
    edges: Edges, starts: Iterable[str], target: str, max_depth: int
) -> tuple[tuple[str, ...], Level] | None:
    """The shortest valid path from any start to `target` and its level, or None.

    Args:
        edges: issuer -> subject -> level of the issuer's valid certification.
        starts: Where paths may begin.
        target: The domain to reach.
        max_depth: Most hops allowed.
    """
    start_list = sorted(set(starts))
    if target in start_list:
        return (target,), Level.FULL
    parent: dict[str, str | None] = {s: None for s in start_list}
    queue = deque((s, 0) for s in start_list)
    while queue:
        node, depth = queue.popleft()
        if depth >= max_depth:
            continue
        out = edges.get(node, {})
        level = out.get(target)
        if level in (Level.FULL, Level.PARTIAL):
            path = [target, node]
            step = parent[node]
            while step is not None:
                path.append(step)
                step = parent[step]
            path.reverse()
            full = level is Level.FULL
            return tuple(path), Level.FULL if full else Level.PARTIAL
        for subject in sorted(out):
            if out[subject] is Level.FULL and subject not in parent:
                parent[subject] = node
                queue.append((subject, depth + 1))
    return None
