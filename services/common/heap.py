"""Heap snapshots on demand, for finding what a long-running server keeps growing.

With `GRACE_HEAP_PROFILE_DIR` set, a server traces its allocations (`tracemalloc`, 10
frames) from start-up, and each SIGUSR1 writes a snapshot,
`<dir>/<service>-<pid>-<n>.tracemalloc`, that `tracemalloc.Snapshot.load` reads back. Two
snapshots of one process, compared by line (`snapshot.compare_to(earlier, "lineno")`), name
the code whose allocations grew between them. Beside each snapshot goes
`<...>.native.json`: what the process holds outside Python's heap (SQLite's allocator, the
C allocator's in-use and free-but-kept bytes, threads, PSS), because a process whose
Python heap is flat can still grow there. Tracing costs CPU and memory, so it is off unless
asked for, and `GRACE_HEAP_PROFILE_SERVICES` (service names, comma-separated) limits
it to the processes under suspicion; `benchmarks/soak.py --heap-profile` uses both.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import tracemalloc
from collections.abc import Mapping
from pathlib import Path

from services.common.allocator import native_memory

log = logging.getLogger(__name__)

HEAP_PROFILE_ENV = "GRACE_HEAP_PROFILE_DIR"
HEAP_PROFILE_SERVICES_ENV = "GRACE_HEAP_PROFILE_SERVICES"
FRAMES = 10


class HeapProfiler:
    """Writes tracemalloc snapshots of this process into a directory.

    Args:
        directory: Where snapshots go (created if missing).
        service: Names the snapshot files.
    """

    def __init__(self, directory: Path, service: str) -> None:
        self.directory = directory
        self.service = service
        self.taken = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str], service: str) -> HeapProfiler | None:
        """A profiler when `GRACE_HEAP_PROFILE_DIR` names a directory and
        `GRACE_HEAP_PROFILE_SERVICES` is unset or names `service`, else None."""
        directory = env.get(HEAP_PROFILE_ENV, "")
        only = {name.strip() for name in env.get(HEAP_PROFILE_SERVICES_ENV, "").split(",")}
        if not directory or (only - {""} and service not in only):
            return None
        return cls(Path(directory), service)

    @classmethod
    def install(cls, env: Mapping[str, str], service: str) -> HeapProfiler | None:
        """For a server's start (on its event loop): when the environment asks for it,
        starts tracing and snapshots on every SIGUSR1; returns the profiler, or None."""
        profiler = cls.from_env(env, service)
        if profiler is not None:
            profiler.start()
            profiler.on_signal(asyncio.get_running_loop())
        return profiler

    def start(self) -> None:
        """Starts tracing allocations (from here on: call it first thing)."""
        if not tracemalloc.is_tracing():
            tracemalloc.start(FRAMES)

    def snapshot(self) -> Path:
        """Writes a snapshot now; returns its path."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.taken += 1
        path = self.directory / f"{self.service}-{os.getpid()}-{self.taken}.tracemalloc"
        tracemalloc.take_snapshot().dump(str(path))
        path.with_suffix(".native.json").write_text(json.dumps(native_memory()))
        log.info("heap snapshot written to %s", path)
        return path

    def on_signal(self, loop: asyncio.AbstractEventLoop) -> None:
        """Writes a snapshot on every SIGUSR1 (from the event loop, not a signal handler)."""
        loop.add_signal_handler(signal.SIGUSR1, self.snapshot)
