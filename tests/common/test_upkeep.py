"""A server process's upkeep: freed memory handed back on a schedule, and a stop when the
supervisor is gone."""

from __future__ import annotations

import asyncio
import os

import pytest

from services.common import allocator
from services.common.allocator import RELEASE_ENV
from services.common.supervision import SUPERVISOR_PID_ENV
from services.common.upkeep import ProcessUpkeep


async def test_free_memory_is_released_on_the_interval_until_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    releases: list[bool] = []
    monkeypatch.setattr(allocator, "release_free_memory", lambda: releases.append(True))
    upkeep = ProcessUpkeep({RELEASE_ENV: "0.01"}, "registry", lambda: None)
    upkeep.start()
    for _ in range(500):
        if len(releases) >= 3:
            break
        await asyncio.sleep(0.01)
    upkeep.stop()
    await asyncio.sleep(0.05)
    stopped_at = len(releases)
    await asyncio.sleep(0.05)
    assert stopped_at >= 3
    assert len(releases) == stopped_at


async def test_zero_turns_releasing_off(monkeypatch: pytest.MonkeyPatch) -> None:
    releases: list[bool] = []
    monkeypatch.setattr(allocator, "release_free_memory", lambda: releases.append(True))
    await asyncio.wait_for(allocator.keep_releasing_free_memory(0), 1)
    assert releases == []


async def test_a_gone_supervisor_starts_the_stop() -> None:
    orphaned = asyncio.Event()
    not_my_parent = {SUPERVISOR_PID_ENV: "1" if os.getppid() != 1 else "2"}
    upkeep = ProcessUpkeep(not_my_parent, "registry", orphaned.set)
    upkeep.start()
    try:
        await asyncio.wait_for(orphaned.wait(), 5)
    finally:
        upkeep.stop()


def test_a_bad_interval_fails_before_serving() -> None:
    with pytest.raises(ValueError, match=RELEASE_ENV):
        ProcessUpkeep({RELEASE_ENV: "soon"}, "registry", lambda: None)
