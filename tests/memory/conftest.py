"""Shared memory fixtures: a core on each backend, a recording publisher, a real server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from services.common.outbox import OutboxEvent
from services.common.storage import Database
from services.memory.config import MemoryConfig
from services.memory.memory import MemorySettings, SharedMemory
from services.memory.store import MemoryStore
from tests.conftest import DatabaseTarget
from tests.support import ManualClock, server_config


class RecordingPublisher:
    """A publisher that records what it is given, or fails while `down` is set."""

    def __init__(self) -> None:
        self.events: list[OutboxEvent] = []
        self.down = False
        self.attempts = 0

    async def publish(self, events: Sequence[OutboxEvent]) -> None:
        self.attempts += 1
        if self.down:
            raise ConnectionError("event bus unreachable")
        self.events.extend(events)

    def types(self) -> list[str]:
        return [e.event_type for e in self.events]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def memory(database: DatabaseTarget, clock: ManualClock) -> AsyncIterator[SharedMemory]:
    """A shared memory core on each database backend."""
    core = SharedMemory(
        MemoryStore(Database(database.url, schema=database.schema)),
        MemorySettings(max_content_bytes=64 * 1024, watch_buffer=5),
        clock,
    )
    await core.open()
    yield core
    core.close()
    await core.store.close()


def memory_config(tmp_path: Path, database_url: str = "") -> MemoryConfig:
    return MemoryConfig(
        server=server_config("memory", tmp_path, database_url),
        settings=MemorySettings(max_content_bytes=64 * 1024),
        eventbus_address="127.0.0.1:1",
        relay_interval_s=0.05,
    )
