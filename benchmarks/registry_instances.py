"""Registry writes on SQLite, on PostgreSQL, and on two instances sharing PostgreSQL.

Measures, through the registry core (no gRPC), registrations and heartbeats per second
with 8 concurrent writers: on SQLite (one instance, the baseline), on PostgreSQL with one
instance, and on PostgreSQL with two instances taking turns on the revision counter (the
writers split over both). Then the time from a registration on instance A to the change in
a watch on instance B (p50/p99). Needs `GRACE_TEST_POSTGRES_URL`; every figure is printed
beside the SQLite baseline of the same run.

    GRACE_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test \\
        python benchmarks/registry_instances.py [--domains N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.common.config import sqlite_url
from services.common.storage import Database
from services.registry.model import Registration
from services.registry.registry import Registry, RegistrySettings
from services.registry.store import RegistryStore

WRITERS = 8
SETTINGS = RegistrySettings(default_lease_ttl_s=300, deregister_after_s=300, history=100_000)


async def _open(url: str, schema: str | None) -> Registry:
    registry = Registry(RegistryStore(Database(url, schema=schema)), SETTINGS)
    await registry.open()
    return registry


async def _close(registry: Registry) -> None:
    await registry.close()
    await registry.store.close()


@asynccontextmanager
async def _schema(url: str) -> AsyncIterator[str]:
    import asyncpg

    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    name = f"bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(dsn)
    await conn.execute(f'CREATE SCHEMA "{name}"')
    await conn.close()
    try:
        yield name
    finally:
        conn = await asyncpg.connect(dsn)
        await conn.execute(f'DROP SCHEMA "{name}" CASCADE')
        await conn.close()


async def _rate(calls: list[Callable[[], Awaitable[object]]]) -> float:
    """Calls per second, `WRITERS` at a time."""
    queue = list(reversed(calls))

    async def writer() -> None:
        while queue:
            await queue.pop()()

    started = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(WRITERS)))
    return len(calls) / (time.perf_counter() - started)


async def _writes(instances: list[Registry], domains: int) -> dict[str, float]:
    ids = [f"d{i:05d}" for i in range(domains)]

    def on(i: int) -> Registry:
        return instances[i % len(instances)]

    registrations = await _rate(
        [
            (lambda i=i, d=d: on(i).register(Registration(d, "127.0.0.1", 9000, ("ml",))))
            for i, d in enumerate(ids)
        ]
    )
    heartbeats = await _rate(
        [(lambda i=i, d=d: on(i + 1).heartbeat(d)) for i, d in enumerate(ids * 2)]
    )
    return {"registrations_per_s": registrations, "heartbeats_per_s": heartbeats}


async def _propagation(a: Registry, b: Registry, samples: int) -> dict[str, float]:
    seen: dict[str, float] = {}
    arrived = asyncio.Event()

    async def watch() -> None:
        async for batch in b.watch(b.revision):
            for change in batch.changes:
                seen[change.record.domain_id] = time.perf_counter()
            arrived.set()

    watching = asyncio.create_task(watch())
    delays = []
    for n in range(samples):
        domain_id = f"p{n:05d}"
        arrived.clear()
        started = time.perf_counter()
        await a.register(Registration(domain_id, "127.0.0.1", 9000, ("ml",)))
        while domain_id not in seen:
            await arrived.wait()
            arrived.clear()
        delays.append((seen[domain_id] - started) * 1000)
    watching.cancel()
    delays.sort()
    return {"p50_ms": statistics.median(delays), "p99_ms": delays[int(len(delays) * 0.99) - 1]}


async def main(domains: int) -> None:
    url = os.environ.get("GRACE_TEST_POSTGRES_URL")
    if not url:
        sys.exit("set GRACE_TEST_POSTGRES_URL to a PostgreSQL database")
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as root:
        sqlite = await _open(sqlite_url(Path(root) / "registry.db"), None)
        try:
            results["sqlite_one_instance"] = await _writes([sqlite], domains)
        finally:
            await _close(sqlite)
    async with _schema(url) as schema:
        one = await _open(url, schema)
        try:
            results["postgresql_one_instance"] = await _writes([one], domains)
        finally:
            await _close(one)
    async with _schema(url) as schema:
        a, b = await _open(url, schema), await _open(url, schema)
        try:
            results["postgresql_two_instances"] = await _writes([a, b], domains)
            propagation = await _propagation(a, b, 200)
        finally:
            await _close(a)
            await _close(b)
    base = results["sqlite_one_instance"]
    print(f"{'':26} {'registrations/s':>16} {'ratio':>6} {'heartbeats/s':>13} {'ratio':>6}")
    for name, figures in results.items():
        r, h = figures["registrations_per_s"], figures["heartbeats_per_s"]
        print(
            f"{name:26} {r:16.0f} {r / base['registrations_per_s']:6.2f}"
            f" {h:13.0f} {h / base['heartbeats_per_s']:6.2f}"
        )
    print(
        f"registration on A to watch on B: p50 {propagation['p50_ms']:.2f} ms, "
        f"p99 {propagation['p99_ms']:.2f} ms"
    )
    print("(shared 2-core machine: compare the ratios, not the absolute figures)")
    print(
        json.dumps(
            {
                "benchmark": "registry_instances",
                "domains": domains,
                "writers": WRITERS,
                "results": results,
                "propagation": propagation,
            }
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=1000)
    asyncio.run(main(parser.parse_args().domains))
