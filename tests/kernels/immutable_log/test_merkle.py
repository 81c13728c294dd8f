"""RFC 6962 hashing and proofs: the RFC's worked examples, an independent reference
implementation, and properties (every proof verifies; any flipped bit fails)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.kernels.immutable_log.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)


def reference_root(leaves: list[bytes]) -> bytes:
    """MTH straight from RFC 6962 section 2.1, over raw leaf data, with hashlib only."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(
        b"\x01" + reference_root(leaves[:k]) + reference_root(leaves[k:])
    ).digest()


def reference_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) from RFC 6962 section 2.1.1."""
    if len(leaves) <= 1:
        return []
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    if m < k:
        return [*reference_path(m, leaves[:k]), reference_root(leaves[k:])]
    return [*reference_path(m - k, leaves[k:]), reference_root(leaves[:k])]


def reference_subproof(m: int, leaves: list[bytes], complete: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) from RFC 6962 section 2.1.2."""
    n = len(leaves)
    if m == n:
        return [] if complete else [reference_root(leaves)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*reference_subproof(m, leaves[:k], complete), reference_root(leaves[k:])]
    return [*reference_subproof(m - k, leaves[k:], False), reference_root(leaves[:k])]


# The seven-leaf tree of RFC 6962 section 2.1.3 (RFC 9162 section 2.1.5):
#            hash
#           /    \
#          k      l
#         / \    / \
#        g   h  i   j
#       / \ / \ / \ |
#       a b c d e f d6
DATA = [f"d{i}".encode() for i in range(7)]
a, b, c, d, e, f, j = (leaf_hash(x) for x in DATA)
g, h, i = node_hash(a, b), node_hash(c, d), node_hash(e, f)
k, l_ = node_hash(g, h), node_hash(i, j)
ROOT = node_hash(k, l_)


def test_hashes_use_the_rfc_prefixes_and_empty_tree_hash() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert leaf_hash(b"").hex() == (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )
    assert (
        node_hash(b"L" * 32, b"R" * 32) == hashlib.sha256(b"\x01" + b"L" * 32 + b"R" * 32).digest()
    )


def test_the_rfc_seven_leaf_tree_has_the_rfc_root() -> None:
    tree = MerkleTree(leaf_hash(x) for x in DATA)
    assert tree.root() == ROOT == reference_root(DATA)
    assert tree.root(4) == k
    assert tree.root(6) == node_hash(k, i)


@pytest.mark.parametrize(
    ("index", "expected"),
    [(0, [b, h, l_]), (3, [c, g, l_]), (4, [f, j, k]), (6, [i, k])],
)
def test_inclusion_proofs_match_the_rfc_audit_paths(index: int, expected: list[bytes]) -> None:
    tree = MerkleTree(leaf_hash(x) for x in DATA)
    assert tree.inclusion_proof(index) == expected
    assert verify_inclusion(leaf_hash(DATA[index]), index, 7, expected, ROOT)


@pytest.mark.parametrize(("first", "expected"), [(3, [c, d, g, l_]), (4, [l_]), (6, [i, j, k])])
def test_consistency_proofs_match_the_rfc_examples(first: int, expected: list[bytes]) -> None:
    tree = MerkleTree(leaf_hash(x) for x in DATA)
    assert tree.consistency_proof(first, 7) == expected
    assert verify_consistency(first, 7, tree.root(first), ROOT, expected)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=8), min_size=1, max_size=40), st.data())
def test_every_inclusion_proof_matches_the_reference_and_verifies(
    leaves: list[bytes], data: st.DataObject
) -> None:
    tree = MerkleTree(leaf_hash(x) for x in leaves)
    size = data.draw(st.integers(1, len(leaves)))
    index = data.draw(st.integers(0, size - 1))
    proof = tree.inclusion_proof(index, size)
    assert tree.root(size) == reference_root(leaves[:size])
    assert proof == reference_path(index, leaves[:size])
    assert verify_inclusion(leaf_hash(leaves[index]), index, size, proof, tree.root(size))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=8), min_size=1, max_size=40), st.data())
def test_every_consistency_proof_matches_the_reference_and_verifies(
    leaves: list[bytes], data: st.DataObject
) -> None:
    tree = MerkleTree(leaf_hash(x) for x in leaves)
    second = data.draw(st.integers(1, len(leaves)))
    first = data.draw(st.integers(1, second))
    proof = tree.consistency_proof(first, second)
    if first < second:
        assert proof == reference_subproof(first, leaves[:second], True)
    assert verify_consistency(first, second, tree.root(first), tree.root(second), proof)


def _flip(value: bytes, bit: int) -> bytes:
    out = bytearray(value)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=8), min_size=2, max_size=40), st.data())
def test_any_flipped_bit_breaks_an_inclusion_proof(
    leaves: list[bytes], data: st.DataObject
) -> None:
    tree = MerkleTree(leaf_hash(x) for x in leaves)
    size = len(leaves)
    index = data.draw(st.integers(0, size - 1))
    proof = tree.inclusion_proof(index, size)
    leaf, root = leaf_hash(leaves[index]), tree.root()
    target = data.draw(st.sampled_from(["leaf", "root", "proof"]))
    bit = data.draw(st.integers(0, 255))
    if target == "leaf":
        leaf = _flip(leaf, bit)
    elif target == "root":
        root = _flip(root, bit)
    else:
        position = data.draw(st.integers(0, len(proof) - 1))
        proof[position] = _flip(proof[position], bit)
    assert not verify_inclusion(leaf, index, size, proof, root)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=8), min_size=3, max_size=40), st.data())
def test_any_flipped_bit_breaks_a_consistency_proof(
    leaves: list[bytes], data: st.DataObject
) -> None:
    tree = MerkleTree(leaf_hash(x) for x in leaves)
    second = len(leaves)
    first = data.draw(st.integers(1, second - 1))
    proof = tree.consistency_proof(first, second)
    old, new = tree.root(first), tree.root(second)
    target = data.draw(st.sampled_from(["old", "new", "proof"] if proof else ["old", "new"]))
    bit = data.draw(st.integers(0, 255))
    if target == "old":
        old = _flip(old, bit)
    elif target == "new":
        new = _flip(new, bit)
    else:
        position = data.draw(st.integers(0, len(proof) - 1))
        proof[position] = _flip(proof[position], bit)
    assert not verify_consistency(first, second, old, new, proof)


def test_proofs_for_wrong_positions_or_sizes_are_rejected() -> None:
    tree = MerkleTree(leaf_hash(x) for x in DATA)
    proof = tree.inclusion_proof(3)
    assert not verify_inclusion(leaf_hash(DATA[3]), 2, 7, proof, ROOT)
    # (Sizes whose path has the same shape give the same root: the signed checkpoint is
    # what binds a root to its size.)
    assert not verify_inclusion(leaf_hash(DATA[6]), 6, 8, tree.inclusion_proof(6), ROOT)
    assert not verify_inclusion(leaf_hash(DATA[3]), 7, 7, proof, ROOT)
    assert not verify_consistency(3, 7, tree.root(3), ROOT, tree.consistency_proof(4, 7))
    assert not verify_consistency(8, 7, ROOT, ROOT, [])


def test_truncate_undoes_appends_exactly() -> None:
    tree = MerkleTree(leaf_hash(x) for x in DATA)
    tree.truncate(3)
    tree.extend(leaf_hash(x) for x in DATA[3:])
    assert tree.root() == ROOT
    assert tree.inclusion_proof(6) == [i, k]
