"""Governance Evaluate and immune ReportMetrics against a no-op call, measured in one run.

Governance (SQLite, 20 policies, every decision durably recorded with its two outbox rows):
sequential Evaluate p50/p99 and throughput with 50 concurrent callers, against the gRPC
health Check of the same server (no storage, no logic). Immune: ReportMetrics with 100
points per call (detection on, remediation off) in points per second, and the in-process
detector alone. The machine is shared: read the ratios, not the absolute figures.

    python benchmarks/kernels.py [--calls N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from grpc_health.v1 import health_pb2, health_pb2_grpc

from grace.kernels.governance.v1 import governance_pb2 as gov
from grace.kernels.governance.v1 import governance_pb2_grpc
from grace.kernels.immune.v1 import immune_pb2 as imm
from grace.kernels.immune.v1 import immune_pb2_grpc
from services.common.channels import channel
from services.common.config import ServerConfig, sqlite_url
from services.common.server import GraceServer
from services.kernels.governance.config import GovernanceConfig
from services.kernels.governance.governance import GovernanceSettings
from services.kernels.governance.model import Mode
from services.kernels.governance.server import GovernanceServer
from services.kernels.immune.config import ImmuneConfig
from services.kernels.immune.detector import Detector, DetectorSettings
from services.kernels.immune.remediation import RemediationSettings
from services.kernels.immune.server import ImmuneServer

CONCURRENCY = 50


class Discard:
    """Publisher that accepts everything: the bus and the log are not measured."""

    async def publish(self, events: object) -> None:
        return None


def server_config(service: str, data_dir: Path) -> ServerConfig:
    return ServerConfig(
        service=service,
        data_dir=data_dir,
        database_url=sqlite_url(data_dir / f"{service}.db"),
        shutdown_grace_s=0.5,
    )


async def latencies(call: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        out.append((time.perf_counter() - start) * 1000)
    return out


async def throughput(call: Callable[[int], Awaitable[Any]], n: int) -> float:
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            await call(i)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return n / (time.perf_counter() - start)


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


async def bench_governance(data_dir: Path, calls: int) -> dict[str, float]:
    config = GovernanceConfig(
        server=server_config("governance", data_dir),
        settings=GovernanceSettings(mode=Mode.ENFORCE),
    )
    service = GovernanceServer(config, bus=Discard(), immutable_log=Discard())
    async with GraceServer(config.server, service) as server, channel(server.address) as chan:
        stub = governance_pb2_grpc.GovernanceServiceStub(chan)
        health = health_pb2_grpc.HealthStub(chan)
        for i in range(20):
            await stub.CreatePolicy(
                gov.CreatePolicyRequest(
                    policy=gov.Policy(
                        policy_id=f"p{i:02d}",
                        action=f"domain_{i}.*",
                        principal="user:*",
                        effect=gov.EFFECT_FORBID if i % 2 else gov.EFFECT_PERMIT,
                    )
                )
            )

        def request(i: int) -> gov.EvaluateRequest:
            return gov.EvaluateRequest(
                actor=f"user:{i % 7}",
                action=f"domain_{i % 25}.run",
                resource="r",
                risk_level=gov.RISK_LEVEL_MEDIUM,
            )

        check = health_pb2.HealthCheckRequest()
        await latencies(lambda: health.Check(check), 50)  # warm up
        base = await latencies(lambda: health.Check(check), calls // 4)
        evaluate = await latencies(lambda: stub.Evaluate(request(1)), calls // 4)
        base_rate = await throughput(lambda i: health.Check(check), calls)
        eval_rate = await throughput(lambda i: stub.Evaluate(request(i)), calls)
    return {
        "noop_p50_ms": statistics.median(base),
        "evaluate_p50_ms": statistics.median(evaluate),
        "evaluate_p99_ms": p(evaluate, 99),
        "noop_calls_per_s": base_rate,
        "evaluate_calls_per_s": eval_rate,
    }


async def bench_immune(data_dir: Path, calls: int) -> dict[str, float]:
    config = ImmuneConfig(
        server=server_config("immune", data_dir),
        detector=DetectorSettings(),
        remediation=RemediationSettings(),
        remediate=False,
    )
    rng = random.Random(7)
    batches = [
        imm.ReportMetricsRequest(
            points=[
                imm.MetricPoint(
                    component=f"c{j % 10}", metric="latency_ms", value=100 + rng.uniform(-5, 5)
                )
                for j in range(100)
            ]
        )
        for _ in range(calls // 10)
    ]
    service = ImmuneServer(config, bus=Discard())
    async with GraceServer(config.server, service) as server, channel(server.address) as chan:
        stub = immune_pb2_grpc.ImmuneServiceStub(chan)
        start = time.perf_counter()
        for batch in batches:
            await stub.ReportMetrics(batch)
        rpc_rate = len(batches) * 100 / (time.perf_counter() - start)
    detector = Detector(DetectorSettings())
    values = [100 + rng.uniform(-5, 5) for _ in range(50_000)]
    start = time.perf_counter()
    for i, v in enumerate(values):
        detector.observe(f"c{i % 10}", "latency_ms", v, float(i))
    core_rate = len(values) / (time.perf_counter() - start)
    return {"report_points_per_s": rpc_rate, "detector_points_per_s": core_rate}


async def main(calls: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        g = await bench_governance(Path(tmp) / "g", calls)
        i = await bench_immune(Path(tmp) / "i", calls)
    rows = [
        ("no-op health Check p50 (baseline)", f"{g['noop_p50_ms']:.3f} ms", "1.00x"),
        (
            "Evaluate p50 (sequential)",
            f"{g['evaluate_p50_ms']:.3f} ms",
            f"{g['evaluate_p50_ms'] / g['noop_p50_ms']:.2f}x",
        ),
        ("Evaluate p99 (sequential)", f"{g['evaluate_p99_ms']:.3f} ms", ""),
        (f"no-op Check, {CONCURRENCY} concurrent", f"{g['noop_calls_per_s']:.0f} calls/s", "1.00x"),
        (
            f"Evaluate, {CONCURRENCY} concurrent",
            f"{g['evaluate_calls_per_s']:.0f} calls/s",
            f"{g['evaluate_calls_per_s'] / g['noop_calls_per_s']:.2f}x",
        ),
        ("ReportMetrics (100 points/call)", f"{i['report_points_per_s']:.0f} points/s", ""),
        ("detector alone (in process)", f"{i['detector_points_per_s']:.0f} points/s", ""),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(width)}  {'figure':>18}  vs baseline")
    for name, figure, ratio in rows:
        print(f"{name.ljust(width)}  {figure:>18}  {ratio}")
    print(json.dumps({**g, **i}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    asyncio.run(main(parser.parse_args().calls))
