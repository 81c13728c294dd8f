"""RFC 6962 / RFC 9162 Merkle tree hashing shared by the immutable log and event signing.

Hashes: empty tree `SHA-256("")`, leaf `SHA-256(0x00 || data)`, node
`SHA-256(0x01 || left || right)`; a tree of n leaves splits at the largest power of two
smaller than n. The distinct leaf and node prefixes keep a leaf from ever passing for an
inner node (second-preimage resistance).

These are pure functions of hashes. The immutable log's persistent tree
(`services.kernels.immutable_log.merkle`) builds on them; batch event signatures
(`services.common.event_signing`) build a small in-memory tree with `tree_paths` and check
one event with `root_from_path`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data)."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def tree_paths(leaf_hashes: Sequence[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The root of a small tree and the inclusion path of every leaf, leaf side first.

    Pairs nodes level by level and carries a level's odd last node up unchanged, which
    yields exactly RFC 6962's tree (split at the largest power of two), in O(n log n).

    Raises:
        ValueError: no leaves.
    """
    if not leaf_hashes:
        raise ValueError("a tree needs at least one leaf")
    levels = [list(leaf_hashes)]
    while len(levels[-1]) > 1:
        below = levels[-1]
        above = [node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
        if len(below) & 1:
            above.append(below[-1])
        levels.append(above)
    paths: list[list[bytes]] = []
    for index in range(len(leaf_hashes)):
        path: list[bytes] = []
        position = index
        for level in levels[:-1]:
            sibling = position ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            position >>= 1
        paths.append(path)
    return levels[-1][0], paths


def root_from_path(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes | None:
    """The root that `proof` leads to from leaf hash `leaf` at `index` in a tree of `size`.

    RFC 9162 section 2.1.3.2 without the final comparison, so a caller can group leaves by
    the root they reach. None when the proof cannot be a path of that tree shape.
    """
    if not 0 <= index < size or any(len(p) != HASH_SIZE for p in proof):
        return None
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not (fn & 1) and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 section 2.1.3.2: does `proof` show leaf `index` is in the tree `root`?"""
    return root_from_path(leaf, index, size, proof) == root
