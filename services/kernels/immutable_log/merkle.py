"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs, and their offline verification.

Hashes: empty tree `SHA-256("")`, leaf `SHA-256(0x00 || data)`, node
`SHA-256(0x01 || left || right)`; a tree of n leaves splits at the largest power of two
smaller than n.

Every hash a root or a proof needs is the hash of a *complete aligned subtree*, or a
right fold of a few of them: the node `(level, index)` covers leaves
[index * 2^level, (index + 1) * 2^level), and once those leaves exist its hash never
changes. RFC 6962's recursion only ever asks for a range [start, end) whose start is a
multiple of its largest power of two, so the range is the complete subtrees of the set
bits of `end - start`, left to right (`covering_nodes`), folded from the right
(`fold_right`). The functions here turn a proof request into those ranges and nodes;
where the hashes come from is the caller's business:

- the immutable log keeps only a `MerkleFrontier` in memory (the O(log n) complete
  subtrees of its current size: enough to append and to compute the current root) and
  reads every other node from its store, where each commit writes the nodes its leaves
  complete;
- `MerkleTree` keeps every node in memory (about 64 bytes per leaf): a tool for small
  trees, tests and benchmarks, never for a log that grows without bound.

The verification functions are pure and need nothing but the hashes: they are what an
auditor with the log's public key runs offline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

from services.common.merkle_hashing import (
    EMPTY_ROOT,
    HASH_SIZE,
    leaf_hash,
    node_hash,
    split_point,
    verify_inclusion,
)

# The pure hashing lives in services.common (event batch signatures use it too); it is
# re-exported here for the log's callers.
__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MerkleFrontier",
    "MerkleTree",
    "Node",
    "Range",
    "consistency_ranges",
    "covering_nodes",
    "fold_right",
    "frontier_nodes",
    "inclusion_ranges",
    "leaf_hash",
    "node_hash",
    "nodes_of",
    "range_hashes",
    "split_point",
    "verify_consistency",
    "verify_inclusion",
]

Node = tuple[int, int]
"""A complete aligned subtree: (level, index), covering leaves
[index * 2^level, (index + 1) * 2^level); level 0 is a leaf."""

Range = tuple[int, int]
"""Leaves [start, end) whose MTH a root or proof needs."""

# `MerkleFrontier.append` hashes pairs inline (the log's hot path).
_NODE_PREFIX = b"\x01"


def covering_nodes(start: int, end: int) -> list[Node]:
    """The complete aligned subtrees that make up [start, end), left to right: one per set
    bit of `end - start`, largest first.

    Raises:
        ValueError: an empty range, or one RFC 6962's recursion never produces (its start
            is not a multiple of its largest power of two).
    """
    count = end - start
    if count <= 0:
        raise ValueError(f"range [{start}, {end}) is empty")
    top = count.bit_length() - 1
    if start % (1 << top):
        raise ValueError(f"range [{start}, {end}) is not aligned to 2^{top}")
    nodes: list[Node] = []
    for level in range(top, -1, -1):
        if count >> level & 1:
            nodes.append((level, start >> level))
            start += 1 << level
    return nodes


def frontier_nodes(size: int) -> list[Node]:
    """The nodes of a tree's right frontier: the complete subtrees of [0, size)."""
    return covering_nodes(0, size) if size else []


def fold_right(hashes: Sequence[bytes]) -> bytes:
    """MTH of a range from the hashes of its covering nodes (RFC 6962 splits off the
    largest complete subtree on the left, so the smaller ones combine first)."""
    result = hashes[-1]
    for left in reversed(hashes[:-1]):
        result = node_hash(left, result)
    return result


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """The ranges whose hashes form leaf `index`'s audit path in a tree of `size` leaves,
    leaf side first (RFC 6962 section 2.1.1)."""
    if not 0 <= index < size:
        raise IndexError(f"leaf {index} is not in a tree of size {size}")
    path: list[Range] = []
    start, end, m = 0, size, index
    while end - start > 1:
        k = split_point(end - start)
        if m < k:
            path.append((start + k, end))
            end = start + k
        else:
            path.append((start, start + k))
            start += k
            m -= k
    path.reverse()
    return path


def consistency_ranges(first: int, second: int) -> list[Range]:
    """The ranges whose hashes prove the first `first` leaves are a prefix of the first
    `second` (RFC 6962 section 2.1.2), in proof order."""
    if not 0 < first <= second:
        raise ValueError(f"first size {first} must be in [1, {second}]")
    path: list[Range] = []
    start, end, m, complete = 0, second, first, True
    while m != end - start:
        k = split_point(end - start)
        if m <= k:
            path.append((start + k, end))
            end = start + k
        else:
            path.append((start, start + k))
            start += k
            m -= k
            complete = False
    if not complete:
        path.append((start, end))
    path.reverse()
    return path


def nodes_of(ranges: Iterable[Range]) -> set[Node]:
    """Every node the hashes of `ranges` need."""
    return {node for start, end in ranges for node in covering_nodes(start, end)}


def range_hashes(ranges: Sequence[Range], hash_of: Callable[[Node], bytes]) -> list[bytes]:
    """The MTH of each range, given the hash of each node in `nodes_of(ranges)`."""
    return [fold_right([hash_of(n) for n in covering_nodes(s, e)]) for s, e in ranges]


class MerkleFrontier:
    """The right edge of an append-only tree: the hash of each complete subtree of
    [0, size), largest first. popcount(size) hashes, so at most 64 of them.

    Args:
        size: The tree size these hashes are the frontier of.
        hashes: The hashes of `frontier_nodes(size)`, in that order.
    """

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if len(hashes) != size.bit_count() or any(len(h) != HASH_SIZE for h in hashes):
            raise ValueError(f"a frontier of size {size} has {size.bit_count()} hashes")
        self.size = size
        self._hashes = list(hashes)

    def copy(self) -> MerkleFrontier:
        """An independent frontier of the same tree."""
        return MerkleFrontier(self.size, self._hashes)

    @property
    def hash_count(self) -> int:
        """How many hashes the frontier holds (popcount of the size)."""
        return len(self._hashes)

    def nodes(self) -> dict[Node, bytes]:
        """The frontier's nodes and their hashes."""
        return dict(zip(frontier_nodes(self.size), self._hashes, strict=True))

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Adds one leaf hash; returns the (level, index, hash) of the subtrees above the
        leaves it completes (levels >= 1), lowest first."""
        if len(leaf) != HASH_SIZE:
            raise ValueError("a leaf hash has 32 bytes")
        hashes = self._hashes
        hashes.append(leaf)
        self.size += 1
        size, level = self.size, 0
        completed: list[tuple[int, int, bytes]] = []
        # Each trailing zero bit of the new size is a pair completed at that level.
        while size >> level & 1 == 0:
            right = hashes.pop()
            parent = hashlib.sha256(_NODE_PREFIX + hashes.pop() + right).digest()
            hashes.append(parent)
            level += 1
            completed.append((level, (self.size >> level) - 1, parent))
        return completed

    def extend(self, leaves: Iterable[bytes]) -> list[tuple[int, int, bytes]]:
        """Adds leaf hashes in order; returns every subtree they complete (see `append`)."""
        completed: list[tuple[int, int, bytes]] = []
        for leaf in leaves:
            completed += self.append(leaf)
        return completed

    def root(self) -> bytes:
        """The root hash of the whole tree."""
        return fold_right(self._hashes) if self._hashes else EMPTY_ROOT


class MerkleTree:
    """Every complete subtree hash of an append-only tree, in memory: level L holds the
    hashes of its complete aligned subtrees packed 32 bytes each (about 64 bytes per leaf
    in all). For small trees, tests and benchmarks; the immutable log keeps a
    `MerkleFrontier` and its store instead.

    Args:
        leaf_hashes: Leaf hashes to start with, in index order.
    """

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self._frontier = MerkleFrontier()
        self.extend(leaf_hashes)

    @property
    def size(self) -> int:
        """The number of leaves."""
        return self._frontier.size

    def append(self, leaf: bytes) -> None:
        """Adds one leaf hash and the subtree hashes it completes."""
        completed = self._frontier.append(leaf)
        self._levels[0] += leaf
        for level, _index, digest in completed:
            if len(self._levels) == level:
                self._levels.append(bytearray())
            self._levels[level] += digest

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Adds leaf hashes in order."""
        for leaf in leaves:
            self.append(leaf)

    def truncate(self, size: int) -> None:
        """Drops every leaf from `size` on."""
        self._check_size(size)
        for level, hashes in enumerate(self._levels):
            del hashes[(size >> level) * HASH_SIZE :]
        self._frontier = MerkleFrontier(size, [self._node(n) for n in frontier_nodes(size)])

    def leaf(self, index: int) -> bytes:
        """The hash of leaf `index`."""
        if not 0 <= index < self.size:
            raise IndexError(index)
        return self._node((0, index))

    def _node(self, node: Node) -> bytes:
        level, index = node
        return bytes(self._levels[level][index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def _hashes(self, ranges: Sequence[Range]) -> list[bytes]:
        return range_hashes(ranges, self._node)

    def root(self, size: int | None = None) -> bytes:
        """The root hash of the first `size` leaves (default: all)."""
        size = self.size if size is None else size
        self._check_size(size)
        return self._hashes([(0, size)])[0] if size else EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The audit path of leaf `index` in the tree of `size` leaves, leaf side first."""
        size = self.size if size is None else size
        self._check_size(size)
        return self._hashes(inclusion_ranges(index, size))

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        """The proof that the first `first` leaves are a prefix of the first `second`."""
        second = self.size if second is None else second
        self._check_size(second)
        return self._hashes(consistency_ranges(first, second))

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise ValueError(f"tree size {size} is beyond the log's size {self.size}")


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 section 2.1.4.2: does `proof` show tree `first_root` (size `first`) is a
    prefix of tree `second_root` (size `second`)?"""
    if first < 0 or first > second or any(len(p) != HASH_SIZE for p in proof):
        return False
    if first == second:
        return not proof and first_root == second_root
    if first == 0:
        return not proof and first_root == EMPTY_ROOT
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    if not path:
        return False
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not (fn & 1) and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == first_root and sr == second_root
