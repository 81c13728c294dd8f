"""Benchmark of the unified telemetry: what counting costs a call, and what the kernel pays.

1. Per call: `CallTallies.record` as every domain now calls it (per-component tally plus the
   caller's edge with its latency histogram), against the baseline measured in the same
   run: the per-component tally alone, as before the telemetry.
2. Per report: the immune kernel's `TrafficRecord.report` of reports of `--edges` edges each
   into SQLite (merge into the slot, upsert the slot's rows), reports per second.
3. Per query: `GetTelemetry`'s core over a full hour (360 slots of `--edges` edges), in ms.

Prints a table, then one JSON line with the figures.

Run: .venv/bin/python benchmarks/telemetry.py [--calls N] [--edges N] [--reports N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from services.common.call_metrics import CallTallies, TrafficKind  # noqa: E402
from services.common.storage import Database  # noqa: E402
from services.kernels.immune.store import ImmuneStore  # noqa: E402
from services.kernels.immune.telemetry import TelemetrySettings  # noqa: E402
from services.kernels.immune.traffic import TrafficRecord  # noqa: E402


def per_call_ns(calls: int, *, with_caller: bool) -> float:
    tallies = CallTallies()
    callers = [f"domain_{i}" for i in range(8)]
    started = time.perf_counter()
    for i in range(calls):
        latency = (i % 97) / 1000.0
        if with_caller:
            tallies.record("ai_domain", latency, error=False, caller=callers[i % 8])
        else:
            tallies.record("ai_domain", latency, error=False)
    return (time.perf_counter() - started) / calls * 1e9


def report_of(edges: int, seed: int) -> list[Any]:
    tallies = CallTallies()
    for e in range(edges):
        for j in range(5):
            tallies.record_edge(
                TrafficKind.CALL, f"caller_{e}", "ai_domain", (seed + j) / 1000.0, error=False
            )
    return list(tallies.drain_traffic().items())


async def kernel(edges: int, reports: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = ImmuneStore(Database(f"sqlite+aiosqlite:///{Path(tmp) / 'immune.db'}"))
        await store.open()
        now = [0.0]
        record = TrafficRecord(store, TelemetrySettings(), dict, lambda: now[0])
        await record.open()
        batches = [report_of(edges, i) for i in range(reports)]
        started = time.perf_counter()
        for i, batch in enumerate(batches):
            now[0] = i * 10.0 * 360 / reports  # spread over the hour: every slot filled
            await record.report(batch)
        report_rate = reports / (time.perf_counter() - started)
        started = time.perf_counter()
        queries = 20
        for _ in range(queries):
            telemetry = record.telemetry(3600)
        query_ms = (time.perf_counter() - started) / queries * 1000
        assert telemetry.total_requests == edges * 5 * reports
        await store.close()
        return report_rate, query_ms


def main(calls: int, edges: int, reports: int) -> dict[str, Any]:
    baseline = min(per_call_ns(calls, with_caller=False) for _ in range(3))
    counted = min(per_call_ns(calls, with_caller=True) for _ in range(3))
    report_rate, query_ms = asyncio.run(kernel(edges, reports))
    print(f"{'path':<58}{'figure':>14}")
    print(f"{'baseline: per-component tally only, ns per call':<58}{baseline:>14,.0f}")
    print(f"{'tally + caller edge with histogram, ns per call':<58}{counted:>14,.0f}")
    print(f"{'ratio':<58}{counted / baseline:>14.2f}")
    print(f"{f'kernel: reports of {edges} edges stored per second':<58}{report_rate:>14,.0f}")
    print(f"{f'kernel: 1 h window (360 slots x {edges} edges), ms per query':<58}{query_ms:>14.1f}")
    return {
        "baseline_ns_per_call": round(baseline),
        "ns_per_call": round(counted),
        "ratio": round(counted / baseline, 2),
        "edges": edges,
        "reports_per_s": round(report_rate, 1),
        "hour_query_ms": round(query_ms, 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--edges", type=int, default=50)
    parser.add_argument("--reports", type=int, default=360)
    args = parser.parse_args()
    print(json.dumps(main(args.calls, args.edges, args.reports)))
