"""What every long-running Grace process does beside serving.

It shuts down when its supervisor is gone (`supervision`), hands the C allocator's free
memory back every so often (`allocator`), and writes heap snapshots when asked (`heap`).
The gRPC servers and the gateway start it the same way, in their `serve_forever`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from services.common.allocator import keep_releasing_free_memory, release_interval_s
from services.common.heap import HeapProfiler
from services.common.supervision import watch_supervisor


class ProcessUpkeep:
    """The background work of one server process, from `start` until `stop`.

    Args:
        env: The process's environment (supervisor pid, release interval, heap profiling).
        service: Names the process in heap snapshots.
        on_orphaned: Called once when the supervisor is gone: begin a graceful stop.
    """

    def __init__(
        self, env: Mapping[str, str], service: str, on_orphaned: Callable[[], None]
    ) -> None:
        self._env = env
        self._service = service
        self._on_orphaned = on_orphaned
        self._release_every_s = release_interval_s(env)  # a bad value fails before serving
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Starts it on the running loop."""
        HeapProfiler.install(self._env, self._service)
        self._tasks = [
            asyncio.create_task(
                watch_supervisor(self._env, self._on_orphaned), name="watch-supervisor"
            ),
            asyncio.create_task(
                keep_releasing_free_memory(self._release_every_s), name="release-free-memory"
            ),
        ]

    def stop(self) -> None:
        """Ends it (the server is stopping)."""
        for task in self._tasks:
            task.cancel()
        self._tasks = []
