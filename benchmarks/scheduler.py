"""Scheduler benchmark: firing lateness with 10,000 active schedules, and what an idle
schedule costs.

Runs the scheduler core in this process on a durable SQLite file (WAL, synchronous=FULL),
with its real loop and real time; governance allows everything and the action (start a
workflow) is recorded in memory, so the figures are the scheduler's own: claim, plan,
governance round, action call, outcome with its two outbox rows.

  (a) lateness: 10,000 interval schedules of period 60 s whose due times are spread evenly
      over the minute (about 167 firings/s); over a window of WINDOW_S seconds, lateness =
      when the action was called - the due time, p50/p99/max, and the process's CPU use.
      The baseline is the same measurement with 1 schedule firing every second: the floor
      of one loop pass.
  (b) idle cost: 10,000 schedules due in an hour. Memory: resident set growth of this
      process after creating them (the scheduler keeps nothing per schedule in memory).
      CPU: process CPU time of the loop over IDLE_S seconds with them, against the same
      loop with none. Disk: database bytes per schedule.

    .venv/bin/python benchmarks/scheduler.py [--database-url postgresql://...]

The last line is one JSON object with every figure. Target: lateness p99 under 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from services.common.config import sqlite_url
from services.common.governance_client import GateDecision
from services.common.storage import Database
from services.kernels.scheduler import timing
from services.kernels.scheduler.firer import SchedulerSettings
from services.kernels.scheduler.model import (
    Action,
    ActionKind,
    ScheduleSpec,
    ScheduleState,
    Timing,
    TimingKind,
)
from services.kernels.scheduler.scheduler import Scheduler
from services.kernels.scheduler.store import SchedulerStore, schedules

SCHEDULES = 10_000
PERIOD_S = 60.0
WINDOW_S = 30.0
IDLE_S = 10.0
LEAD_S = 5.0


class Recorder:
    """The action side: records how late each workflow start is."""

    def __init__(self) -> None:
        self.lateness: list[float] = []

    async def start_workflow(
        self, workflow_id: str, data: dict[str, Any], request_id: str
    ) -> dict[str, Any]:
        self.lateness.append(time.time() - float(data["_schedule"]["due"]))
        return {"execution_id": request_id}

    async def execution_running(self, execution_id: str) -> bool:
        return False

    async def call_domain(
        self, params: dict[str, Any], data: dict[str, Any], idempotency_key: str
    ) -> dict[str, Any]:
        return {}

    async def create_task(self, params: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        return {}


class AllowAll:
    async def check(self, actor: str, action: str, resource: str = "", **_: Any) -> GateDecision:
        return GateDecision(True, "allow", "bench")


def rss_mib() -> float:
    """Current resident set size of this process in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def db_bytes(path: Path | None) -> int:
    """Bytes of an SQLite database with its write-ahead log (0 for PostgreSQL)."""
    if path is None:
        return 0
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def make_scheduler(url: str, schema: str | None = None) -> tuple[Scheduler, Recorder]:
    recorder = Recorder()
    store = SchedulerStore(Database(url, schema=schema))
    scheduler = Scheduler(
        store,
        recorder,
        AllowAll(),
        SchedulerSettings(
            instance_id="bench", poll_interval_s=1.0, lookahead_s=0.5, max_concurrent=256
        ),
    )
    await scheduler.open()
    return scheduler, recorder


async def insert(scheduler: Scheduler, count: int, period: float, lead_s: float) -> float:
    """Creates `count` interval schedules whose due times are spread over one period from
    `lead_s` seconds from now, in one statement (set-up, not measured); returns how long
    the insert took, which must stay under `lead_s` for the figures to mean anything."""
    began = time.time()
    first_due = began + lead_s
    rows = []
    for i in range(count):
        schedule_id = f"s{i:05d}"
        start = first_due + period * i / count
        spec = ScheduleSpec(
            Timing(TimingKind.INTERVAL, every_s=period, start=start),
            Action(ActionKind.WORKFLOW, {"workflow_id": "wf", "input": {}}),
            "operator:bench",
        )
        rows.append(
            {
                "schedule_id": schedule_id,
                "owner": spec.owner,
                "state": ScheduleState.ACTIVE.value,
                "spec": spec.to_json(),
                "created_at": began,
                "updated_at": began,
                "next_due": start,
                "next_fire_at": timing.fire_time(schedule_id, spec, start),
                "last_due": 0.0,
                "fire_count": 0,
                "version": 1,
                "request_id": None,
            }
        )
    async with scheduler.store.db.transaction() as conn:
        await conn.execute(schedules.insert(), rows)
    return time.time() - began


async def lateness(
    url: str, count: int, period: float, window: float, schema: str | None = None
) -> dict[str, float]:
    scheduler, recorder = await make_scheduler(url, schema)
    took = await insert(scheduler, count, period, LEAD_S)
    if took >= LEAD_S:
        print(f"warning: inserting {count} schedules took {took:.1f}s, past the first due time")
    loop = asyncio.create_task(scheduler.run())
    await asyncio.sleep(LEAD_S - took)
    cpu_before = cpu_s()
    await asyncio.sleep(window)
    cpu_used = cpu_s() - cpu_before
    loop.cancel()
    await asyncio.gather(loop, return_exceptions=True)
    await scheduler.idle()
    await scheduler.close()
    await scheduler.store.close()
    late = sorted(x * 1000 for x in recorder.lateness)
    if not late:
        return {"firings": 0}
    return {
        "firings": len(late),
        "rate_per_s": round(len(late) / window, 1),
        "cpu_pct": round(100 * cpu_used / window, 1),
        "p50_ms": round(statistics.median(late), 2),
        "p99_ms": round(late[min(len(late) - 1, int(len(late) * 0.99))], 2),
        "max_ms": round(late[-1], 2),
    }


async def idle_cost(url: str, db_file: Path | None, schema: str | None = None) -> dict[str, float]:
    results: dict[str, float] = {}
    for label, count in (("empty", 0), ("loaded", SCHEDULES)):
        scheduler, _ = await make_scheduler(url, schema)
        rss_before = rss_mib()
        size_before = db_bytes(db_file)
        if count:
            await insert(scheduler, count, PERIOD_S, 3600)
        loop = asyncio.create_task(scheduler.run())
        await asyncio.sleep(0.5)
        cpu_before = cpu_s()
        await asyncio.sleep(IDLE_S)
        results[f"cpu_{label}_s"] = cpu_s() - cpu_before
        results[f"rss_{label}_mib"] = rss_mib() - rss_before
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await scheduler.close()
        await scheduler.store.close()
        if count and db_file is not None:
            results["db_bytes_per_schedule"] = (db_bytes(db_file) - size_before) / count
    return {
        "rss_per_schedule_bytes": round(
            max(0.0, results["rss_loaded_mib"]) * 1024 * 1024 / SCHEDULES, 1
        ),
        "cpu_idle_empty_pct": round(100 * results["cpu_empty_s"] / IDLE_S, 2),
        "cpu_idle_loaded_pct": round(100 * results["cpu_loaded_s"] / IDLE_S, 2),
        "cpu_per_schedule_us_per_s": round(
            max(0.0, results["cpu_loaded_s"] - results["cpu_empty_s"]) / IDLE_S / SCHEDULES * 1e6,
            3,
        ),
        "db_bytes_per_schedule": round(results.get("db_bytes_per_schedule", 0.0), 1),
    }


@contextlib.asynccontextmanager
async def postgres_schemas(url: str, names: list[str]) -> AsyncIterator[dict[str, str]]:
    """A fresh schema per phase on PostgreSQL, dropped afterwards."""
    import asyncpg

    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    schemas = {name: f"bench_{name}_{uuid.uuid4().hex[:8]}" for name in names}
    conn = await asyncpg.connect(dsn)
    try:
        for schema in schemas.values():
            await conn.execute(f'CREATE SCHEMA "{schema}"')
        yield schemas
    finally:
        for schema in schemas.values():
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="", help="PostgreSQL URL (default SQLite)")
    args = parser.parse_args()
    phases = ["baseline", "lateness", "idle"]
    async with contextlib.AsyncExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        figures: dict[str, Any] = {"benchmark": "scheduler", "schedules": SCHEDULES}
        urls: dict[str, tuple[str, Path | None, str | None]]
        if args.database_url:
            schemas = await stack.enter_async_context(postgres_schemas(args.database_url, phases))
            urls = {name: (args.database_url, None, schemas[name]) for name in phases}
        else:
            urls = {
                name: (sqlite_url(tmp / f"{name}.db"), tmp / f"{name}.db", None) for name in phases
            }
        figures["backend"] = "postgresql" if args.database_url else "sqlite"
        url, _, schema = urls["baseline"]
        baseline = await lateness(url, 1, 1.0, 10.0, schema)
        print(f"baseline (1 schedule, every 1 s):      {baseline}")
        url, _, schema = urls["lateness"]
        loaded = await lateness(url, SCHEDULES, PERIOD_S, WINDOW_S, schema)
        print(f"{SCHEDULES} schedules, period {PERIOD_S:g} s: {loaded}")
        idle = await idle_cost(*urls["idle"])
        print(f"idle schedule cost:                    {idle}")
        figures.update(
            {
                "baseline_lateness": baseline,
                "lateness": loaded,
                "idle": idle,
                "target_p99_ms": 100,
                "meets_target": loaded.get("p99_ms", 1e9) < 100,
            }
        )
        print(json.dumps(figures))


if __name__ == "__main__":
    asyncio.run(main())
