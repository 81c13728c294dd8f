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
import ctypes
import json
import logging
import os
import signal
import threading
import tracemalloc
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


class _MallInfo2(ctypes.Structure):
    """glibc's `struct mallinfo2` (glibc 2.33+): totals over every malloc arena."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def native_memory() -> dict[str, Any]:
    """This process's memory by holder, in bytes, for telling apart what grows:

    - `python_traced`: Python objects (tracemalloc's count; 0 when not tracing);
    - `sqlite`: what SQLite holds, page caches included (`sqlite3_memory_used`); SQLite
      allocates through malloc, so this is a part of `malloc_in_use`;
    - `malloc_in_use`, `malloc_free`: the C allocator's bytes handed out, and bytes freed but
      kept by its arenas (fragmentation shows here), over all arenas; None off glibc;
    - `threads`, and `pss` and `anonymous` from `/proc/self/smaps_rollup` where it exists.
    """
    stats: dict[str, Any] = {
        "python_traced": tracemalloc.get_traced_memory()[0],
        "sqlite": _sqlite_memory_used(),
        "malloc_in_use": None,
        "malloc_free": None,
        "threads": threading.active_count(),
    }
    try:
        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
        stats["malloc_in_use"] = info.uordblks + info.hblkhd
        stats["malloc_free"] = info.fordblks
    except (OSError, AttributeError):
        pass  # not glibc, or older than 2.33
    try:
        rollup = Path("/proc/self/smaps_rollup").read_text()
    except OSError:
        return stats
    for line in rollup.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Pss", "Anonymous"):
            stats[key.lower()] = int(rest.split()[0]) * 1024
    return stats


def _sqlite_memory_used() -> int | None:
    """Bytes SQLite's allocator holds in this process, through the library the `sqlite3`
    module uses (symbols resolve through the extension, linked statically or not)."""
    import _sqlite3

    try:
        used = ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_used
    except (OSError, AttributeError):
        return None
    used.restype = ctypes.c_int64
    return int(used())
