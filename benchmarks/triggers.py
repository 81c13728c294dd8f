"""Trigger mesh benchmark: firings per second, and the latency the mesh adds between an
event's delivery and its action.

Runs the mesh core in this process on a durable SQLite file (WAL), with its real loop and
real time: every event is claimed (one transaction), taken (a leased compare-and-set),
checked against the trust scorer and governance (both answer at once here, so the figures
are the mesh's own, not its peers'), its workflow started (recorded in memory) and its
outcome written with its two outbox rows (bus event and log entry).

  (a) throughput: BURST events delivered by 16 concurrent deliverers as fast as they can;
      firings per second = firings finished / time from first delivery to last action.
  (b) latency: events paced at RATE per second for PACED_S seconds; added latency = when
      the action is called - when the event was handed to the mesh, p50/p99/max.
      The baseline is the same measurement with one event at a time (nothing else queued).
  (c) the floor: at the same rate, one bare SQLite commit (WAL, synchronous=FULL, one row)
      per event on a writer thread, the least any durable claim costs on this disk and CPU
      at that moment. On a shared machine the p99 follows the floor: compare the two.

    .venv/bin/python benchmarks/triggers.py [--burst 2000] [--rate 100] [--paced-s 10]

The last line is one JSON object with every figure. Target: added latency p99 under 20 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from services.common.config import sqlite_url
from services.common.governance_client import GateDecision
from services.common.outbox import Outbox
from services.common.storage import Database, apply_sqlite_pragmas
from services.kernels.triggers.mesh import MeshSettings, TriggerMesh
from services.kernels.triggers.model import event_document
from services.kernels.triggers.store import TriggersStore, events_outbox, log_outbox

RULE = {
    "rule_id": "start-document",
    "pattern": "document.uploaded",
    "condition": "data.size > `100`",
    "action": "workflow",
    "target": {"workflow_id": "document"},
    "input": {"document_id": "subject", "size": "data.size"},
    "min_trust": 0.5,
}


class Recorder:
    """Peers that record when each action was called."""

    def __init__(self) -> None:
        self.called: dict[str, float] = {}
        self.done = asyncio.Event()
        self.expected = 0

    async def start_workflow(
        self, workflow_id: str, data: dict[str, Any], request_id: str
    ) -> dict[str, Any]:
        self.called[str(data["document_id"])] = time.perf_counter()
        if len(self.called) >= self.expected:
            self.done.set()
        return {"execution_id": request_id}

    async def execution_running(self, execution_id: str) -> bool:
        return False

    async def call_domain(
        self, params: dict[str, Any], data: dict[str, Any], idempotency_key: str
    ) -> dict[str, Any]:
        return {}

    async def create_task(self, params: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        return {}


class Allow:
    async def check(self, actor: str, action: str, resource: str = "", **_: Any) -> GateDecision:
        return GateDecision(True, "allow", "bench")


class Trusted:
    async def score(self, domain_id: str) -> float:
        return 0.9


@contextlib.asynccontextmanager
async def running_mesh(path: Path) -> AsyncIterator[tuple[TriggerMesh, Recorder]]:
    store = TriggersStore(Database(sqlite_url(path)))
    await store.open()
    recorder = Recorder()
    mesh = TriggerMesh(
        store,
        Allow(),
        Trusted(),
        recorder,
        Outbox(store.db, events_outbox, "triggers"),
        Outbox(store.db, log_outbox, "triggers"),
        settings=MeshSettings(poll_interval_s=0.5, batch=500, max_concurrent=64),
    )
    await mesh.load()
    await mesh.put_rule(RULE)
    loop = asyncio.create_task(mesh.run())
    try:
        yield mesh, recorder
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
        await store.close()


def event(n: str) -> dict[str, Any]:
    return event_document(f"ev-{n}", "document.uploaded", "library", n, time.time(), {"size": 500})


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
    }


async def throughput(path: Path, burst: int) -> dict[str, float]:
    async with running_mesh(path) as (mesh, recorder):
        recorder.expected = burst
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(burst):
            queue.put_nowait(i)

        async def deliverer() -> None:
            while not queue.empty():
                await mesh.observe(event(f"b{queue.get_nowait()}"))

        start = time.perf_counter()
        await asyncio.gather(*(deliverer() for _ in range(16)))
        await asyncio.wait_for(recorder.done.wait(), timeout=600)
        elapsed = max(recorder.called.values()) - start
    return {
        "firings": burst,
        "seconds": round(elapsed, 3),
        "firings_per_s": round(burst / elapsed, 1),
    }


async def latency(path: Path, rate: float, seconds: float, tag: str) -> dict[str, float]:
    async with running_mesh(path) as (mesh, recorder):
        count = max(1, int(rate * seconds))
        recorder.expected = count
        handed: dict[str, float] = {}
        interval = 1.0 / rate
        start = time.perf_counter()
        for i in range(count):
            target = start + i * interval
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            name = f"{tag}{i}"
            handed[name] = time.perf_counter()
            await mesh.observe(event(name))
        await asyncio.wait_for(recorder.done.wait(), timeout=600)
        added = [recorder.called[n] - handed[n] for n in handed]
    return {"events": count, "rate_per_s": rate, **percentiles(added)}


async def commit_floor(path: Path, rate: float, seconds: float) -> dict[str, float]:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    apply_sqlite_pragmas(conn)
    conn.execute("CREATE TABLE claims (n INTEGER)")

    def commit(n: int) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO claims VALUES (?)", (n,))
        conn.execute("COMMIT")

    loop = asyncio.get_running_loop()
    count = max(1, int(rate * seconds))
    took: list[float] = []
    with ThreadPoolExecutor(1) as writer:
        start = time.perf_counter()
        for i in range(count):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            began = time.perf_counter()
            await loop.run_in_executor(writer, commit, i)
            took.append(time.perf_counter() - began)
    conn.close()
    return {"commits": count, "rate_per_s": rate, **percentiles(took)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--paced-s", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        baseline = await latency(root / "baseline.db", 5.0, 4.0, "s")
        print(f"baseline (one event at a time, 5/s): {baseline}")
        floor = await commit_floor(root / "floor.db", args.rate, args.paced_s)
        print(f"floor (one bare commit per event, {args.rate:g}/s): {floor}")
        paced = await latency(root / "paced.db", args.rate, args.paced_s, "p")
        print(f"paced ({args.rate:g}/s for {args.paced_s:g}s):  {paced}")
        print(f"paced p99 / floor p99: {paced['p99_ms'] / floor['p99_ms']:.2f}")
        burst = await throughput(root / "burst.db", args.burst)
        print(f"burst ({args.burst} events, 16 deliverers): {burst}")
    result = {
        "benchmark": "triggers",
        "baseline_latency": baseline,
        "paced_latency": paced,
        "commit_floor": floor,
        "paced_p99_over_floor_p99": round(paced["p99_ms"] / floor["p99_ms"], 2),
        "throughput": burst,
        "target_p99_ms": 20,
        "met": paced["p99_ms"] < 20,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
