"""What a process holds outside Python's heap, and handing the C allocator's free memory back.

glibc's malloc keeps memory that was freed inside its arenas for reuse, and a server with
many threads (one per SQLite connection through aiosqlite, gRPC's) has many arenas: under a
steady load the freed-but-kept bytes climb while what is in use stays flat, and the process
looks as if it leaked. `release_free_memory` (glibc's `malloc_trim`, about 0.1 ms) returns
the free pages of every arena to the system; servers call it every
`GRACE_RELEASE_MEMORY_EVERY_S` seconds (30 by default, 0 turns it off). Elsewhere than
glibc both are no-ops.
"""

from __future__ import annotations

import asyncio
import ctypes
import math
import threading
import tracemalloc
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from services.common.config import ConfigError

RELEASE_ENV = "GRACE_RELEASE_MEMORY_EVERY_S"
RELEASE_EVERY_S = 30.0


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


_LIBC = _libc()


def release_free_memory() -> bool:
    """Returns the free pages the C allocator keeps, in every arena, to the system. False
    where the allocator cannot (not glibc)."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True


def release_interval_s(env: Mapping[str, str]) -> float:
    """Seconds between releases, from `GRACE_RELEASE_MEMORY_EVERY_S`; 0 means never."""
    raw = env.get(RELEASE_ENV, "")
    try:
        value = float(raw) if raw else RELEASE_EVERY_S
    except ValueError:
        raise ConfigError(f"{RELEASE_ENV} must be a number of seconds, not {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{RELEASE_ENV} must be a finite, non-negative number, not {raw!r}")
    return value


async def keep_releasing_free_memory(interval_s: float) -> None:
    """`release_free_memory` every `interval_s` seconds until cancelled (a server's life)."""
    if interval_s <= 0 or getattr(_LIBC, "malloc_trim", None) is None:
        return
    while True:
        await asyncio.sleep(interval_s)
        release_free_memory()


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
    mallinfo2 = getattr(_LIBC, "mallinfo2", None)  # glibc 2.33+
    if mallinfo2 is not None:
        mallinfo2.restype = _MallInfo2
        info = mallinfo2()
        stats["malloc_in_use"] = info.uordblks + info.hblkhd
        stats["malloc_free"] = info.fordblks
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
