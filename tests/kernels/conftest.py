"""Fixtures shared by the kernels' end-to-end tests: the orchestrator tests' `world` (a real
registry on a free port, ready for fake domains)."""

from __future__ import annotations

from tests.orchestrator.conftest import world

__all__ = ["world"]
