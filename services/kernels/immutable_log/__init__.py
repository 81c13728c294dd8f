"""The immutable log kernel: an RFC 6962 Merkle log with signed checkpoints."""
