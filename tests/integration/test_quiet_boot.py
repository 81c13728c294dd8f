"""A boot of the whole system logs no noise: nothing that reads like a problem when there
is none (the immutable log waiting for the bus, streams ending, keepalive pings)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.grace_up import running_grace

pytestmark = pytest.mark.slow

NOISE = ("subscribing to", "too_many_pings", "Traceback", "CancelledError")


async def test_a_boot_and_a_stream_that_its_client_leaves_log_no_noise(tmp_path: Path) -> None:
    async with running_grace(tmp_path) as grace:
        logs = grace.data_dir / "logs"
        async with grace.http(timeout=30) as http:
            # A client that reads one message of a stream and leaves.
            async with http.stream("GET", "/domains/watch") as response:
                assert response.status_code == 200
                await anext(response.aiter_lines())
            for _ in range(300):
                text = (logs / "immutable_log.log").read_text(errors="replace")
                if "subscription" in text and ("created" in text or "kept" in text):
                    break
                await asyncio.sleep(0.2)
            else:
                pytest.fail("the immutable log never subscribed to the bus")
            await asyncio.sleep(1.0)
    noisy = {
        log.name: [
            line
            for line in log.read_text(errors="replace").splitlines()
            if any(marker in line for marker in NOISE)
        ]
        for log in sorted(logs.glob("*.log"))
    }
    assert {name: lines for name, lines in noisy.items() if lines} == {}
