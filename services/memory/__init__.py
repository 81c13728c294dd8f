"""Shared memory: contributions, verification, confidence and full-text search."""
