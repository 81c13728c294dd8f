"""Push subscriptions made at start-up wait for a bus that is not up yet without noise."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from pathlib import Path

import pytest

from services.common.channels import channel
from services.common.subscriptions import Subscriptions
from services.eventbus.server import EventBusServer
from tests.eventbus.conftest import bus_config
from tests.support import ManualClock, free_port, serving

PATTERNS = ["healing.*", "governance.*", "trust.*", "immune.*", "orchestrator.*"]


async def until_failures(subscriptions: Subscriptions, count: int) -> None:
    for _ in range(1000):
        if subscriptions.failures >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"only {subscriptions.failures} failed attempts")


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == level and r.name == "services.common.subscriptions"
    ]


async def test_a_bus_that_starts_after_the_subscriber_costs_one_info_line_and_no_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()
    async with channel(f"127.0.0.1:{port}") as chan:
        subscriptions = Subscriptions(
            chan,
            "immutable_log",
            PATTERNS,
            backoff_initial_s=0.05,
            backoff_max_s=0.2,
            call_timeout_s=0.3,
        )
        running = asyncio.create_task(subscriptions.run())
        await until_failures(subscriptions, 3)
        config = bus_config(tmp_path)
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, port=port))
        service = EventBusServer(config)
        async with serving(service.config.server, service):
            await asyncio.wait_for(running, timeout=60)
    assert subscriptions.created.is_set()
    assert records(caplog, logging.WARNING) == []
    waiting = [m for m in records(caplog, logging.INFO) if "waiting" in m]
    assert len(waiting) == 1, records(caplog, logging.INFO)
    assert "healing.*" in waiting[0]


async def test_a_bus_away_longer_than_the_patience_is_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    async with channel(f"127.0.0.1:{free_port()}") as chan:
        subscriptions = Subscriptions(
            chan,
            "immutable_log",
            PATTERNS,
            backoff_initial_s=0.01,
            backoff_max_s=0.01,
            call_timeout_s=0.05,
            patience_s=60,
            clock=clock,
        )
        running = asyncio.create_task(subscriptions.run())
        await until_failures(subscriptions, 2)
        clock.advance(61)
        await until_failures(subscriptions, 6)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    warnings = records(caplog, logging.WARNING)
    assert len(warnings) == 1, warnings
    assert "still unavailable after 61s" in warnings[0]
