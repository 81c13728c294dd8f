"""The immutable log's integrity check: one pass over everything stored.

It recomputes every leaf hash from the exact leaf bytes, rebuilds the tree, and compares
it with every signed tree head and with the stored tree nodes (what proofs are served
from). Only a frontier, one chunk of nodes and one chunk of heads are held at a time, so
the check needs no more memory for a billion entries than for a thousand.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.kernels.immutable_log.merkle import MerkleFrontier, leaf_hash
from services.kernels.immutable_log.store import Head, LogStore, StoredEntry


@dataclass(frozen=True)
class IntegrityReport:
    """Result of recomputing the log from storage."""

    valid: bool
    checked: int
    first_bad_index: int
    reason: str
    root_hash: bytes


class IntegrityScan:
    """One pass over the stored log: leaves against their stored hashes, the rebuilt tree
    against the signed heads and against the stored nodes proofs are served from.

    Feed it the entries in index order (`add`), then call `finish` and `close`.

    Args:
        store: The log's store (for heads and nodes).
        chunk: Entries whose completed nodes are checked together, in one query.
    """

    def __init__(self, store: LogStore, chunk: int) -> None:
        self.store = store
        self._chunk = chunk
        self.frontier = MerkleFrontier()
        self.bad, self.reason = -1, ""
        self._heads = store.heads()
        self._next_head: Head | None = None
        self._heads_started = False
        # The last head that matched, and the first that did not, in size order.
        self._matched = 0
        self._head_mismatch: tuple[int, str] | None = None
        self._node_mismatch: tuple[int, str] | None = None
        self._chunk_start = 0
        self._completed: list[tuple[int, int, bytes]] = []

    async def add(self, row: StoredEntry) -> bool:
        """Checks one entry; False once the scan found a bad one."""
        expected = self.frontier.size
        if row.index != expected:
            self.bad, self.reason = expected, f"entry {expected} is missing from storage"
            return False
        recomputed = leaf_hash(row.leaf_data)
        if recomputed != row.leaf_hash:
            self.bad, self.reason = row.index, "leaf data does not match its stored leaf hash"
            return False
        self._completed += self.frontier.append(recomputed)
        await self._check_heads()
        if self.frontier.size - self._chunk_start >= self._chunk:
            await self._check_nodes()
        return True

    async def _check_heads(self) -> None:
        if not self._heads_started:
            self._heads_started = True
            self._next_head = await anext(self._heads, None)
        size = self.frontier.size
        while self._next_head is not None and self._next_head.tree_size <= size:
            head = self._next_head
            if head.tree_size == size and self._head_mismatch is None:
                if head.root_hash == self.frontier.root():
                    self._matched = size
                else:
                    self._head_mismatch = (
                        self._matched,
                        f"entries [{self._matched}, {size}) do not match the signed tree "
                        f"head of size {size}",
                    )
            self._next_head = await anext(self._heads, None)

    async def _check_nodes(self) -> None:
        start, end = self._chunk_start, self.frontier.size
        completed, self._completed, self._chunk_start = self._completed, [], end
        if self._node_mismatch is not None or not completed:
            return
        stored = await self.store.nodes_completed(start, end)
        for level, index, digest in completed:
            if stored.get((level, index)) != digest:
                first = index << level
                self._node_mismatch = (
                    first,
                    f"entries [{first}, {first + (1 << level)}) do not match the tree node "
                    "stored for them",
                )
                return

    async def finish(self, size: int) -> None:
        """Settles what the whole scan found, for a log of `size` entries."""
        if self.bad >= 0:
            return
        checked = self.frontier.size
        if checked < size:
            self.bad, self.reason = checked, f"entry {checked} is missing from storage"
            return
        await self._check_nodes()
        latest = await self.store.head(checked)
        if checked and (latest is None or latest.root_hash != self.frontier.root()):
            # Rows rewritten together with their hash column still disagree with the signed
            # heads: the first head that does not match bounds where the rewrite starts.
            self.bad, self.reason = self._head_mismatch or (
                self._matched,
                f"no signed tree head matches size {checked}",
            )
        elif self._node_mismatch is not None:
            self.bad, self.reason = self._node_mismatch

    async def close(self) -> None:
        """Stops reading heads."""
        await self._heads.aclose()

    def report(self) -> IntegrityReport:
        """The result."""
        valid = self.bad < 0
        root = self.frontier.root() if valid else b""
        return IntegrityReport(valid, self.frontier.size, self.bad, self.reason, root)
