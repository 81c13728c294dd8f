"""Heap snapshots on demand: off by default, a loadable snapshot per SIGUSR1 when asked."""

from __future__ import annotations

import asyncio
import os
import signal
import tracemalloc
from pathlib import Path

from services.common.heap import HEAP_PROFILE_ENV, HEAP_PROFILE_SERVICES_ENV, HeapProfiler


def test_without_the_variable_there_is_no_profiler() -> None:
    assert HeapProfiler.from_env({}, "registry") is None


def test_a_list_of_services_limits_profiling_to_them(tmp_path: Path) -> None:
    env = {HEAP_PROFILE_ENV: str(tmp_path), HEAP_PROFILE_SERVICES_ENV: "memory, immutable_log"}
    assert HeapProfiler.from_env(env, "registry") is None
    assert HeapProfiler.from_env(env, "immutable_log") is not None
    assert HeapProfiler.from_env({**env, HEAP_PROFILE_SERVICES_ENV: ""}, "registry") is not None


async def test_sigusr1_writes_a_snapshot_that_names_the_code_that_allocated(
    tmp_path: Path,
) -> None:
    profiler = HeapProfiler.from_env({HEAP_PROFILE_ENV: str(tmp_path)}, "registry")
    assert profiler is not None
    was_tracing = tracemalloc.is_tracing()
    profiler.start()
    loop = asyncio.get_running_loop()
    try:
        profiler.on_signal(loop)
        before = profiler.snapshot()
        hoard = [bytearray(1024) for _ in range(2000)]  # about 2 MB from this line
        os.kill(os.getpid(), signal.SIGUSR1)
        for _ in range(100):
            if profiler.taken == 2:
                break
            await asyncio.sleep(0.01)
        after = tmp_path / f"registry-{os.getpid()}-2.tracemalloc"
        assert after.exists()
        growth = tracemalloc.Snapshot.load(str(after)).compare_to(
            tracemalloc.Snapshot.load(str(before)), "lineno"
        )
        top = growth[0]
        assert top.traceback[0].filename == __file__
        assert top.size_diff > 1_000_000
        assert len(hoard) == 2000
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        if not was_tracing:
            tracemalloc.stop()


def test_a_snapshot_has_its_native_figures_beside_it(tmp_path: Path) -> None:
    import json

    profiler = HeapProfiler(tmp_path, "memory")
    was_tracing = tracemalloc.is_tracing()
    profiler.start()
    try:
        path = profiler.snapshot()
    finally:
        if not was_tracing:
            tracemalloc.stop()
    native = json.loads(path.with_suffix(".native.json").read_text())
    assert native["python_traced"] > 0
    assert {"sqlite", "malloc_in_use", "malloc_free", "threads"} <= native.keys()
