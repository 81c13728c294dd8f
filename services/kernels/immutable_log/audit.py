"""Offline checks of what the immutable log hands out, with the log's public key only.

These are what `grace log verify-inclusion` / `verify-consistency` run, and what any
client (the SDK, an auditor) can call: no network, no log state, just the signed
checkpoint(s), the proof and the exact leaf bytes.
"""

from __future__ import annotations

from grace.kernels.immutable_log.v1 import immutable_log_pb2 as pb
from services.kernels.immutable_log.checkpoint import Checkpoint, CheckpointError, verify_checkpoint
from services.kernels.immutable_log.merkle import leaf_hash, verify_consistency, verify_inclusion


class AuditError(ValueError):
    """A proof or checkpoint does not check out; the message says which part."""


def _checkpoint(note: str, name: str, public_key: bytes, label: str) -> Checkpoint:
    try:
        return verify_checkpoint(note, name, public_key)
    except CheckpointError as exc:
        raise AuditError(f"{label}: {exc}") from None


def check_inclusion(
    proof: pb.GetInclusionProofResponse, name: str, public_key: bytes, checkpoint: str = ""
) -> Checkpoint:
    """Checks that the proof's entry is in the tree of a checkpoint signed by the key.

    Args:
        proof: A GetInclusionProof response (with the entry's leaf_data).
        name: The key name (the log's origin).
        public_key: The log's raw Ed25519 public key.
        checkpoint: A signed checkpoint to check against; default the proof's own.

    Returns:
        The verified checkpoint.

    Raises:
        AuditError: any part fails.
    """
    head = _checkpoint(checkpoint or proof.checkpoint, name, public_key, "checkpoint")
    if head.size != proof.tree_size:
        raise AuditError(f"proof is for tree size {proof.tree_size}, checkpoint for {head.size}")
    leaf = leaf_hash(proof.entry.leaf_data)
    if proof.entry.leaf_hash and proof.entry.leaf_hash != leaf:
        raise AuditError("entry: leaf_data does not hash to the leaf_hash served with it")
    if not verify_inclusion(
        leaf, proof.leaf_index, proof.tree_size, list(proof.hashes), head.root_hash
    ):
        raise AuditError(
            f"entry {proof.leaf_index} is not included in the signed tree of size {head.size}"
        )
    return head


def check_consistency(
    proof: pb.GetConsistencyProofResponse,
    name: str,
    public_key: bytes,
    first_checkpoint: str = "",
    second_checkpoint: str = "",
) -> tuple[Checkpoint, Checkpoint]:
    """Checks that the older signed tree is a prefix of the newer one.

    Args:
        proof: A GetConsistencyProof response.
        name: The key name (the log's origin).
        public_key: The log's raw Ed25519 public key.
        first_checkpoint: The older checkpoint you kept; default the proof's own.
        second_checkpoint: The newer checkpoint; default the proof's own.

    Raises:
        AuditError: any part fails.
    """
    old = _checkpoint(
        first_checkpoint or proof.first_checkpoint, name, public_key, "old checkpoint"
    )
    new = _checkpoint(
        second_checkpoint or proof.second_checkpoint, name, public_key, "new checkpoint"
    )
    if (old.size, new.size) != (proof.first_size, proof.second_size):
        raise AuditError(
            f"proof is for sizes {proof.first_size}->{proof.second_size}, "
            f"checkpoints for {old.size}->{new.size}"
        )
    if old.origin != new.origin:
        raise AuditError("the checkpoints come from different logs")
    if not verify_consistency(old.size, new.size, old.root_hash, new.root_hash, list(proof.hashes)):
        raise AuditError(
            f"the tree of size {old.size} is not a prefix of the tree of size {new.size}"
        )
    return old, new
