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
import os
import re
import sys
import tempfile
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
    - `python_arenas`, `python_in_use`, `python_free`: CPython's own allocator for small
      objects (`python_allocator`), which maps its memory itself rather than through malloc;
    - `threads`, and `pss` and `anonymous` from `/proc/self/smaps_rollup` where it exists.
    """
    stats: dict[str, Any] = {
        "python_traced": tracemalloc.get_traced_memory()[0],
        **python_allocator(),
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


_OBMALLOC_FIGURES = {
    "python_arenas": re.compile(r"^(\d+) arenas \* (\d+) bytes/arena"),
    "python_in_use": re.compile(r"^# bytes in allocated blocks\s*=\s*([\d,]+)"),
    "python_free_blocks": re.compile(r"^# bytes in available blocks\s*=\s*([\d,]+)"),
    "python_unused_pools": re.compile(r"^\d+ unused pools \* \d+ bytes\s*=\s*([\d,]+)"),
}


def python_allocator() -> dict[str, int | None]:
    """Bytes of CPython's small-object allocator (objects of up to 512 bytes), which keeps
    its own 1 MiB arenas and hands one back only once every object in it is freed:

    - `python_arenas`: the arenas mapped now;
    - `python_in_use`: the bytes of their live objects;
    - `python_free`: the bytes free inside them (free blocks and unused pools), memory that
      long-lived objects scattered over the arenas keep from being handed back.

    CPython reports them only as text on the C-level standard error
    (`sys._debugmallocstats`), which is redirected to a file meanwhile: what another thread
    writes to standard error in that millisecond lands there too, so this is for heap
    profiles, not for a routine path. None where the interpreter has no such report.
    """
    figures: dict[str, int | None] = dict.fromkeys(
        ("python_arenas", "python_in_use", "python_free")
    )
    report = getattr(sys, "_debugmallocstats", None)
    if report is None:
        return figures
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(captured.fileno(), 2)
            report()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode(errors="replace")
    found: dict[str, int] = {}
    for line in text.splitlines():
        for name, pattern in _OBMALLOC_FIGURES.items():
            match = pattern.match(line)
            if match is None:
                continue
            numbers = [int(group.replace(",", "")) for group in match.groups()]
            found[name] = numbers[0] * numbers[1] if len(numbers) == 2 else numbers[0]
    if {"python_arenas", "python_in_use"} <= found.keys():
        figures["python_arenas"] = found["python_arenas"]
        figures["python_in_use"] = found["python_in_use"]
        figures["python_free"] = found.get("python_free_blocks", 0) + found.get(
            "python_unused_pools", 0
        )
    return figures


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
