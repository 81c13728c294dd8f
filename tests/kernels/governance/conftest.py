"""Fixtures for governance tests: a core on each database backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from services.common.storage import Database
from services.kernels.governance.governance import Governance, GovernanceSettings
from services.kernels.governance.model import Mode
from services.kernels.governance.store import GovernanceStore
from tests.conftest import DatabaseTarget
from tests.support import ManualClock

OpenGovernance = Callable[..., "AsyncIterator[Governance]"]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def opened(
    database: DatabaseTarget, clock: ManualClock
) -> AsyncIterator[Callable[[GovernanceSettings], object]]:
    """Opens governance cores on the same database (to test restarts); closes them all."""
    cores: list[Governance] = []

    async def open_core(settings: GovernanceSettings) -> Governance:
        core = Governance(
            GovernanceStore(Database(database.url, schema=database.schema)), settings, clock
        )
        await core.open()
        cores.append(core)
        return core

    yield open_core
    for core in cores:
        await core.stop()
        await core.store.close()


@pytest.fixture
async def governance(opened: Callable[[GovernanceSettings], object]) -> Governance:
    """A core in ENFORCE mode with the built-in defaults."""
    core = await opened(GovernanceSettings(mode=Mode.ENFORCE))  # type: ignore[misc]
    assert isinstance(core, Governance)
    return core
