"""Memory outside Python's heap: measured by holder, and the allocator's free pages released."""

from __future__ import annotations

import ctypes
import sqlite3

import pytest

from services.common.allocator import (
    RELEASE_ENV,
    RELEASE_EVERY_S,
    native_memory,
    release_free_memory,
    release_interval_s,
)


def test_native_memory_sees_what_sqlite_holds_outside_the_python_heap() -> None:
    before = native_memory()
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (x BLOB)")
    conn.executemany("INSERT INTO t VALUES (?)", [(b"x" * 1000,)] * 3000)  # ~3 MB of pages
    held = native_memory()
    conn.close()
    assert before["sqlite"] is not None
    assert held["sqlite"] - before["sqlite"] > 2_000_000
    assert held["malloc_in_use"] >= held["sqlite"]
    assert held["pss"] > 0
    assert held["threads"] >= 1


def test_releasing_hands_the_free_pages_between_live_blocks_back() -> None:
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    block = 64 * 1024  # below malloc's mmap threshold: these come from the heap
    blocks = [libc.malloc(block) for _ in range(200)]
    for address in blocks:
        ctypes.memset(address, 1, block)  # touched, so resident
    for address in blocks[::2]:
        libc.free(address)  # 6.4 MB free, each piece held in place by a live neighbour
    try:
        before = native_memory()
        assert release_free_memory()
        after = native_memory()
    finally:
        for address in blocks[1::2]:
            libc.free(address)
    assert before["anonymous"] - after["anonymous"] > 4_000_000


def test_the_release_interval_comes_from_the_environment() -> None:
    assert release_interval_s({}) == RELEASE_EVERY_S
    assert release_interval_s({RELEASE_ENV: "5"}) == 5.0
    assert release_interval_s({RELEASE_ENV: "0"}) == 0.0
    with pytest.raises(ValueError, match="number of seconds"):
        release_interval_s({RELEASE_ENV: "often"})
    for bad in ("-1", "nan", "inf"):
        with pytest.raises(ValueError, match="finite, non-negative"):
            release_interval_s({RELEASE_ENV: bad})
