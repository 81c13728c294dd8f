"""Benchmark of the learning kernel: outcomes ingested per second.

Starts the learning kernel on loopback in this process (SQLite, its default) and sends
`--outcomes` synthetic outcomes (several domains and actions, every hour, weekday, input
size and load, 5% failures) as IngestOutcomes batches of `--batch` from `--clients`
concurrent clients, then runs one detection pass. The baseline, measured in the same run,
is the raw store: the same outcomes inserted with executemany into an SQLite table of the
same columns (synchronous=FULL, as the SDK's ring), batch by batch, one transaction each.
Prints a table, then one JSON line with the figures.

Run: .venv/bin/python benchmarks/learning.py [--outcomes N] [--batch N] [--clients N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from grace.kernels.learning.v1 import learning_pb2 as pb  # noqa: E402
from grace.kernels.learning.v1 import learning_pb2_grpc  # noqa: E402
from services.common.channels import channel  # noqa: E402
from services.common.config import ServerConfig, sqlite_url  # noqa: E402
from services.common.server import GraceServer  # noqa: E402
from services.kernels.learning.config import LearningConfig  # noqa: E402
from services.kernels.learning.learning import LearningSettings  # noqa: E402
from services.kernels.learning.server import LearningServer  # noqa: E402

DOMAINS = [f"domain_{i}" for i in range(5)]
ACTIONS = [f"action_{i}" for i in range(10)]


class Discard:
    async def publish(self, events: object) -> None:
        """The bus is not under measure."""


def batches(total: int, size: int, seed: int = 7) -> list[pb.IngestOutcomesRequest]:
    rng = random.Random(seed)
    out = []
    for b in range(0, total, size):
        domain = DOMAINS[(b // size) % len(DOMAINS)]
        out.append(
            pb.IngestOutcomesRequest(
                domain_id=domain,
                batch_id=f"bench-{b}",
                capabilities=["bench"],
                outcomes=[
                    pb.ActionOutcome(
                        action=rng.choice(ACTIONS),
                        success=rng.random() > 0.05,
                        latency_ms=rng.expovariate(1 / 20.0),
                        input_size=rng.randrange(0, 100_000),
                        hour=rng.randrange(24),
                        weekday=rng.randrange(7),
                        attempt=1 if rng.random() > 0.1 else 2,
                        in_flight=rng.randrange(1, 64),
                        sequence=b + i + 1,
                    )
                    for i in range(min(size, total - b))
                ],
            )
        )
    return out


def raw_store(requests: list[pb.IngestOutcomesRequest], path: Path) -> float:
    """Seconds to insert every outcome into a plain SQLite table, one transaction a batch."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE outcomes (row_id INTEGER PRIMARY KEY, domain TEXT, action TEXT, "
        "success INTEGER, latency_ms REAL, input_size INTEGER, hour INTEGER, weekday INTEGER, "
        "attempt INTEGER, in_flight INTEGER, sequence INTEGER)"
    )
    started = time.perf_counter()
    for request in requests:
        with conn:
            conn.executemany(
                "INSERT INTO outcomes (domain, action, success, latency_ms, input_size, hour, "
                "weekday, attempt, in_flight, sequence) VALUES (?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        request.domain_id,
                        o.action,
                        o.success,
                        o.latency_ms,
                        o.input_size,
                        o.hour,
                        o.weekday,
                        o.attempt,
                        o.in_flight,
                        o.sequence,
                    )
                    for o in request.outcomes
                ],
            )
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


async def kernel(
    requests: list[pb.IngestOutcomesRequest], clients: int, data_dir: Path
) -> tuple[float, float, int, int]:
    """Seconds to ingest every batch over gRPC, seconds of one detection pass, outcomes
    counted, patterns found."""
    server_config = ServerConfig(
        service="learning",
        host="127.0.0.1",
        port=0,
        data_dir=data_dir,
        database_url=sqlite_url(data_dir / "learning.db"),
        shutdown_grace_s=0.5,
    )
    config = LearningConfig(
        server=server_config, learning=LearningSettings(analyze_interval_s=3600), memory_address=""
    )
    server = GraceServer(
        server_config, LearningServer(config, bus=Discard(), immutable_log=Discard())
    )
    await server.start()
    try:
        async with channel(server.address) as chan:
            stub = learning_pb2_grpc.LearningServiceStub(chan)
            await stub.GetLearningStats(pb.GetLearningStatsRequest())
            queue = list(reversed(requests))

            async def client() -> None:
                while queue:
                    await stub.IngestOutcomes(queue.pop())

            started = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(clients)))
            ingest_s = time.perf_counter() - started
            started = time.perf_counter()
            analyzed = await stub.Analyze(pb.AnalyzeRequest())
            analyze_s = time.perf_counter() - started
            stats = await stub.GetLearningStats(pb.GetLearningStatsRequest())
            return ingest_s, analyze_s, stats.outcomes, analyzed.found
    finally:
        await server.stop(grace=0.5)


async def main(total: int, size: int, clients: int) -> dict[str, Any]:
    requests = batches(total, size)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        baseline_s = raw_store(requests, data_dir / "raw.db")
        ingest_s, analyze_s, counted, found = await kernel(requests, clients, data_dir)
    if counted != total:
        raise SystemExit(f"the kernel counted {counted} outcomes of {total}")
    kernel_rate = total / ingest_s
    baseline_rate = total / baseline_s
    print(
        f"learning kernel benchmark: {total:,} outcomes in batches of {size}, {clients} "
        f"concurrent clients, loopback gRPC, one process, SQLite"
    )
    print(f"{'path':<40}{'seconds':>10}{'outcomes/s':>14}")
    print(f"{'baseline: raw SQLite executemany':<40}{baseline_s:>10.2f}{baseline_rate:>14,.0f}")
    print(f"{'kernel: IngestOutcomes over gRPC':<40}{ingest_s:>10.2f}{kernel_rate:>14,.0f}")
    print(f"detection pass over {counted:,} outcomes: {analyze_s * 1000:.1f} ms, {found} patterns")
    return {
        "outcomes": total,
        "batch": size,
        "clients": clients,
        "kernel_outcomes_per_s": round(kernel_rate),
        "baseline_raw_insert_per_s": round(baseline_rate),
        "ratio_to_baseline": round(kernel_rate / baseline_rate, 2),
        "analyze_ms": round(analyze_s * 1000, 1),
        "patterns_found": found,
        "target_per_s": 20_000,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outcomes", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.outcomes, args.batch, args.clients))))
