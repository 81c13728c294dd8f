"""RFC 6962 / RFC 9162 Merkle tree hashing, proofs, and their offline verification.

Hashes: empty tree `SHA-256("")`, leaf `SHA-256(0x00 || data)`, node
`SHA-256(0x01 || left || right)`; a tree of n leaves splits at the largest power of two
smaller than n.

`MerkleTree` keeps every *complete aligned subtree* hash: level L holds the hashes of
leaves [i * 2^L, (i + 1) * 2^L) for every i whose range is complete, packed 32 bytes each
in one bytearray per level (about 64 bytes per leaf in all). Those hashes never change once
complete, so any tree size up to the current one has its root and proofs computable from
O(log n) stored hashes, plus at most O(log n) hashes along the right edge: proofs cost
microseconds at a million leaves instead of rehashing the leaves.

The verification functions are pure and need nothing but the hashes: they are what an
auditor with the log's public key runs offline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

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
    "MerkleTree",
    "leaf_hash",
    "node_hash",
    "split_point",
    "verify_consistency",
    "verify_inclusion",
]

# `append` hashes pairs inline from the packed level (its hot path).
_NODE_PREFIX = b"\x01"


class MerkleTree:
    """An append-only RFC 6962 tree over leaf hashes, with O(log n) roots and proofs.

    Args:
        leaf_hashes: Leaf hashes to start with, in index order.
    """

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self.size = 0
        self.extend(leaf_hashes)

    def append(self, leaf: bytes) -> None:
        """Adds one leaf hash and the subtree hashes it completes."""
        if len(leaf) != HASH_SIZE:
            raise ValueError("a leaf hash has 32 bytes")
        levels = self._levels
        levels[0] += leaf
        self.size += 1
        count, level = self.size, 0
        # Each trailing zero bit of the new size is a pair completed at that level.
        while count & 1 == 0:
            below = levels[level]
            parent = hashlib.sha256(_NODE_PREFIX + below[-64:]).digest()
            if len(levels) == level + 1:
                levels.append(bytearray())
            levels[level + 1] += parent
            count >>= 1
            level += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Adds leaf hashes in order."""
        for leaf in leaves:
            self.append(leaf)

    def truncate(self, size: int) -> None:
        """Drops every leaf from `size` on (undoes appends whose commit failed)."""
        self._check_size(size)
        for level, hashes in enumerate(self._levels):
            del hashes[(size >> level) * HASH_SIZE :]
        self.size = size

    def leaf(self, index: int) -> bytes:
        """The hash of leaf `index`."""
        if not 0 <= index < self.size:
            raise IndexError(index)
        return bytes(self._levels[0][index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def _stored(self, level: int, index: int) -> bytes:
        return bytes(self._levels[level][index * HASH_SIZE : (index + 1) * HASH_SIZE])

    def subtree_hash(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for the ranges RFC 6962's recursion produces.

        `start` is a multiple of the largest power of two not above `end - start` in every
        range the recursion asks for, so complete parts are stored hashes.
        """
        n = end - start
        if n & (n - 1) == 0 and start % n == 0:
            level = n.bit_length() - 1
            return self._stored(level, start >> level)
        k = split_point(n)
        return node_hash(self.subtree_hash(start, start + k), self.subtree_hash(start + k, end))

    def root(self, size: int | None = None) -> bytes:
        """The root hash of the first `size` leaves (default: all)."""
        size = self.size if size is None else size
        self._check_size(size)
        return EMPTY_ROOT if size == 0 else self.subtree_hash(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The audit path of leaf `index` in the tree of `size` leaves, leaf side first."""
        size = self.size if size is None else size
        self._check_size(size)
        if not 0 <= index < size:
            raise IndexError(f"leaf {index} is not in a tree of size {size}")
        path: list[bytes] = []
        start, end, m = 0, size, index
        while end - start > 1:
            k = split_point(end - start)
            if m < k:
                path.append(self.subtree_hash(start + k, end))
                end = start + k
            else:
                path.append(self.subtree_hash(start, start + k))
                start += k
                m -= k
        path.reverse()
        return path

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        """The proof that the first `first` leaves are a prefix of the first `second`."""
        second = self.size if second is None else second
        self._check_size(second)
        if not 0 < first <= second:
            raise ValueError(f"first size {first} must be in [1, {second}]")
        path: list[bytes] = []
        start, end, m, complete = 0, second, first, True
        while m != end - start:
            k = split_point(end - start)
            if m <= k:
                path.append(self.subtree_hash(start + k, end))
                end = start + k
            else:
                path.append(self.subtree_hash(start, start + k))
                start += k
                m -= k
                complete = False
        if not complete:
            path.append(self.subtree_hash(start, end))
        path.reverse()
        return path

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
