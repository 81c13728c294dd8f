"""Benchmark of the shared memory: Query and Contribute latency at 100,000 contributions.

Bulk-loads 100,000 synthetic contributions into an SQLite file (the embedded default),
starts the shared memory server on loopback in this process, and measures sequential
calls over gRPC: Query for a common word (in about 20% of contributions), for a rare word
(in 10), for two words together, Contribute, and a no-op gRPC call (health Check) on the
same server as the baseline. Prints a table with p50/p99 and ratios to the baseline, then
one JSON line with the figures.

Run: .venv/bin/python benchmarks/memory.py [--contributions N] [--calls N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from grpc_health.v1 import health_pb2, health_pb2_grpc

from grace.memory.v1 import memory_pb2, memory_pb2_grpc
from services.common.channels import channel
from services.common.config import ServerConfig, sqlite_url
from services.common.outbox import OutboxEvent
from services.common.server import GraceServer
from services.common.storage import Database
from services.memory.confidence import Evidence, confidence
from services.memory.config import MemoryConfig
from services.memory.memory import MemorySettings
from services.memory.model import Contribution
from services.memory.server import MemoryServer
from services.memory.store import MemoryStore
from services.memory.text import document

TYPES = [
    "successful_patterns",
    "failed_patterns",
    "optimization",
    "insight",
    "collaborative_solution",
]
DOMAINS = [f"domain_{i}" for i in range(50)]
COMMON_WORD = "timeout"
RARE_WORD = "zeppelin"
RARE_COUNT = 10


class CountingPublisher:
    """Stands in for the event bus: accepts and counts announcements."""

    def __init__(self) -> None:
        self.count = 0

    async def publish(self, events: Sequence[OutboxEvent]) -> None:
        self.count += len(events)


def synthetic(n: int, rng: random.Random) -> list[tuple[Contribution, str]]:
    """n contributions over a Zipf-like vocabulary of 20,000 words."""
    vocabulary = [f"w{i}x" for i in range(20_000)]
    weights = [1 / (rank + 1) for rank in range(len(vocabulary))]
    rare_at = set(rng.sample(range(n), RARE_COUNT))
    rows = []
    now = time.time()
    for i in range(n):
        issue = rng.choices(vocabulary, weights, k=6)
        solution = rng.choices(vocabulary, weights, k=6)
        if rng.random() < 0.2:
            issue.append(COMMON_WORD)
        if i in rare_at:
            solution.append(RARE_WORD)
        content: dict[str, Any] = {
            "issue": " ".join(issue),
            "solution": " ".join(solution),
            "success_rate": round(rng.random(), 2),
        }
        ctype = rng.choice(TYPES)
        tags = tuple(rng.sample(["ops", "db", "ml", "net", "cache"], k=rng.randint(0, 2)))
        initial = round(rng.random(), 2)
        evidence = Evidence(
            rng.randint(0, 3), rng.randint(0, 1), rng.randint(0, 5), rng.randint(0, 2)
        )
        c = Contribution(
            contribution_id=str(uuid.uuid4()),
            domain_id=rng.choice(DOMAINS),
            contribution_type=ctype,
            content=content,
            tags=tags,
            initial_confidence=initial,
            confidence=confidence(initial, evidence),
            evidence=evidence,
            created_at=now,
            updated_at=now,
        )
        rows.append((c, document(ctype, tags, content)))
    return rows


async def timed(calls: int, make: Callable[[int], Awaitable[Any]]) -> list[float]:
    """Milliseconds of `calls` sequential awaits (after 20 warm-up calls)."""
    for i in range(20):
        await make(i)
    samples = []
    for i in range(calls):
        start = time.perf_counter()
        await make(i)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(n: int, calls: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        url = sqlite_url(Path(tmp) / "memory.db")
        rng = random.Random(42)
        rows = synthetic(n, rng)
        store = MemoryStore(Database(url))
        await store.open()
        start = time.perf_counter()
        await store.bulk_insert(rows)
        load_s = time.perf_counter() - start
        await store.close()
        common_matches = sum(1 for _, doc in rows if f" {COMMON_WORD} " in f" {doc} ")

        config = MemoryConfig(
            server=ServerConfig(service="memory", port=0, data_dir=Path(tmp), database_url=url),
            settings=MemorySettings(),
        )
        publisher = CountingPublisher()
        service = MemoryServer(config, publisher=publisher)
        async with GraceServer(config.server, service) as server, channel(server.address) as chan:
            stub = memory_pb2_grpc.SharedMemoryServiceStub(chan)
            health = health_pb2_grpc.HealthStub(chan)
            noop = await timed(calls, lambda i: health.Check(health_pb2.HealthCheckRequest()))
            common = await timed(
                calls, lambda i: stub.Query(memory_pb2.QueryRequest(query=COMMON_WORD))
            )
            rare = await timed(
                calls, lambda i: stub.Query(memory_pb2.QueryRequest(query=RARE_WORD))
            )
            two = await timed(
                calls,
                lambda i: stub.Query(
                    memory_pb2.QueryRequest(query=f"{COMMON_WORD} w1x", min_confidence=0.5)
                ),
            )

            def contribute(i: int) -> Awaitable[Any]:
                request = memory_pb2.ContributeRequest(
                    domain_id="bench_domain", contribution_type="optimization"
                )
                request.content.update({"issue": f"port {COMMON_WORD} {i}", "solution": "restart"})
                return stub.Contribute(request)

            contrib = await timed(calls, contribute)
            stats = await stub.GetStats(memory_pb2.GetStatsRequest())

    figures = {
        "noop": noop,
        "query_common": common,
        "query_rare": rare,
        "query_two_words": two,
        "contribute": contrib,
    }
    base = statistics.median(noop)
    print(
        f"shared memory benchmark: {n:,} contributions (bulk load {load_s:.1f} s, "
        f"{n / load_s:,.0f}/s), {calls} sequential calls each, SQLite, loopback, one process"
    )
    print(
        f"common word '{COMMON_WORD}' in {common_matches:,} contributions; "
        f"rare word '{RARE_WORD}' in {RARE_COUNT}; page size 50"
    )
    print(f"{'call':<20}{'p50 ms':>10}{'p99 ms':>10}{'p50 / no-op':>14}")
    for name, samples in figures.items():
        p50 = statistics.median(samples)
        print(f"{name:<20}{p50:>10.2f}{pct(samples, 0.99):>10.2f}{p50 / base:>13.1f}x")
    result: dict[str, Any] = {
        "contributions": n,
        "total_after": stats.total_contributions,
        "bulk_load_per_s": round(n / load_s),
        "common_matches": common_matches,
        "rare_matches": RARE_COUNT,
    }
    for name, samples in figures.items():
        result[f"{name}_p50_ms"] = round(statistics.median(samples), 3)
        result[f"{name}_p99_ms"] = round(pct(samples, 0.99), 3)
        result[f"{name}_ratio_to_noop"] = round(statistics.median(samples) / base, 2)
    result["announcements_published"] = publisher.count
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contributions", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.contributions, args.calls))))
