"""Interop tests run real Grace servers; they reuse the registry's fixtures."""

from __future__ import annotations

from tests.registry.conftest import clock, registry_server

__all__ = ["clock", "registry_server"]
