"""Changes that run to their end when their caller is cancelled."""

from __future__ import annotations

import asyncio
import logging

import pytest

from services.common import completion
from services.common.completion import run_to_completion, runs_to_completion
from services.common.errors import NotFound


class Store:
    """Two steps with an await between them, like a row stored and then a worker started."""

    def __init__(self) -> None:
        self.stored: list[str] = []
        self.started: list[str] = []
        self.between = asyncio.Event()
        self.go_on = asyncio.Event()

    @runs_to_completion
    async def create(self, name: str) -> str:
        self.stored.append(name)
        self.between.set()
        await self.go_on.wait()
        self.started.append(name)
        return name


async def test_a_cancelled_caller_stops_waiting_and_the_change_still_ends() -> None:
    store = Store()
    caller = asyncio.create_task(store.create("a"))
    await store.between.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert store.started == []
    store.go_on.set()
    await completion.drain(timeout_s=5)
    assert store.started == ["a"]


async def test_a_caller_still_waiting_gets_the_result_or_the_error() -> None:
    store = Store()
    store.go_on.set()
    assert await store.create("b") == "b"

    async def refuse() -> None:
        raise NotFound("thing", "x")

    with pytest.raises(NotFound):
        await run_to_completion(refuse())


async def test_a_failure_after_the_caller_has_gone_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()

    async def fail(error: Exception) -> None:
        await release.wait()
        raise error

    callers = [
        asyncio.create_task(run_to_completion(fail(RuntimeError("disk gone")))),
        asyncio.create_task(run_to_completion(fail(NotFound("thing", "x")))),
    ]
    await asyncio.sleep(0)
    for caller in callers:
        caller.cancel()
    await asyncio.gather(*callers, return_exceptions=True)
    with caplog.at_level(logging.INFO, logger="services.common.completion"):
        release.set()
        await completion.drain(timeout_s=5)
    levels = sorted(
        (r.levelno, r.getMessage().split(" after ")[0].split()[-1])
        for r in caplog.records
        if r.name == "services.common.completion"
    )
    assert levels == [(logging.INFO, "refused"), (logging.ERROR, "failed")]


async def test_drain_gives_up_on_a_change_after_its_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    never = asyncio.Event()
    caller = asyncio.create_task(run_to_completion(never.wait()))
    await asyncio.sleep(0)
    caller.cancel()
    with caplog.at_level(logging.WARNING, logger="services.common.completion"):
        await completion.drain(timeout_s=0.05)
    assert any("did not finish" in r.getMessage() for r in caplog.records)
    never.set()
    await completion.drain(timeout_s=5)
