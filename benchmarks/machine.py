"""The machine the benchmarks run on: figures that say how fast it is today, not Grace.

The same code gives figures half as high on a loaded or slower machine, and without a
baseline such a run reads as a regression. `make bench` runs this first and last, so every
file of JSON lines says what the machine was like at both ends of the run. It measures what
Grace's figures depend on, each without Grace:

  - the load average and the cores this process may use;
  - the interpreter: a fixed pure-Python loop and SHA-256 over 64 MiB (best of three);
  - starting an interpreter (`python -c pass`, best of five), and one that imports gRPC and
    protobuf, as every component does;
  - fdatasync of a 4 KiB write in the directory the benchmarks keep their data in (p50,
    p99 of 500): every durable commit of the bus, the orchestrator and the logs waits on it;
  - raw JetStream with nats-py when NATS answers on 127.0.0.1:4222: the event-bus
    benchmark's own baseline (async publish -> one pull consumer; latency at 1,000/s).

    .venv/bin/python benchmarks/machine.py [--no-jetstream]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

LOOP_ITERATIONS = 3_000_000
HASHED_BYTES = 64 << 20
FSYNCS = 500


def python_loop_s() -> float:
    """Seconds for a fixed loop of integer arithmetic and a dict, best of three."""

    def once() -> float:
        started = time.perf_counter()
        table: dict[int, int] = {}
        total = 0
        for i in range(LOOP_ITERATIONS):
            total += i * i % 7
            table[i & 1023] = total
        return time.perf_counter() - started

    return min(once() for _ in range(3))


def sha256_mb_per_s() -> float:
    block = os.urandom(1 << 20)
    best = float("inf")
    for _ in range(3):
        digest = hashlib.sha256()
        started = time.perf_counter()
        for _ in range(HASHED_BYTES >> 20):
            digest.update(block)
        best = min(best, time.perf_counter() - started)
    return HASHED_BYTES / (1 << 20) / best


def interpreter_start_s(code: str) -> float:
    """Seconds to run `python -c code` in a fresh interpreter, best of five."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        best = min(best, time.perf_counter() - started)
    return best


def fdatasync_ms(directory: str) -> tuple[float, float]:
    """p50 and p99 of a 4 KiB append followed by fdatasync, in `directory`."""
    samples: list[float] = []
    block = os.urandom(4096)
    with tempfile.TemporaryDirectory(prefix="grace-bench-fsync-", dir=directory) as tmp:
        fd = os.open(Path(tmp) / "probe", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for _ in range(FSYNCS):
                started = time.perf_counter()
                os.write(fd, block)
                os.fdatasync(fd)
                samples.append((time.perf_counter() - started) * 1000)
        finally:
            os.close(fd)
    quantiles = statistics.quantiles(samples, n=100)
    return statistics.median(samples), quantiles[98]


async def raw_jetstream() -> dict[str, float] | None:
    # The event-bus benchmark's baseline, measured the same way.
    from eventbus import nats_figures

    return await nats_figures()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-jetstream", action="store_true", help="skip raw JetStream")
    options = parser.parse_args()
    load_before = os.getloadavg()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    loop_s = python_loop_s()
    sha = sha256_mb_per_s()
    bare_start = interpreter_start_s("pass")
    grpc_start = interpreter_start_s("import grpc, google.protobuf.descriptor_pb2")
    data_dir = tempfile.gettempdir()
    sync_p50, sync_p99 = fdatasync_ms(data_dir)
    jetstream = None if options.no_jetstream else asyncio.run(raw_jetstream())
    load = os.getloadavg()
    print(f"cores {cores}, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")
    print(f"pure-Python loop of {LOOP_ITERATIONS:,}: {loop_s:.3f} s; SHA-256 {sha:,.0f} MB/s")
    print(
        f"interpreter start {bare_start * 1000:.0f} ms; with gRPC and protobuf "
        f"{grpc_start * 1000:.0f} ms"
    )
    print(f"fdatasync of 4 KiB in {data_dir}: p50 {sync_p50:.3f} ms, p99 {sync_p99:.3f} ms")
    if jetstream is not None:
        print(
            f"raw JetStream: {jetstream['throughput']:,.0f} events/s; at 1,000/s "
            f"p50 {jetstream['p50_ms']:.2f} ms, p99 {jetstream['p99_ms']:.2f} ms"
        )
    figures: dict[str, object] = {
        "benchmark": "machine",
        "cores": cores,
        "load_avg_1m_before": round(load_before[0], 2),
        "load_avg_1m": round(load[0], 2),
        "load_avg_5m": round(load[1], 2),
        "python_loop_s": round(loop_s, 4),
        "sha256_mb_s": round(sha),
        "interpreter_start_ms": round(bare_start * 1000, 1),
        "grpc_import_start_ms": round(grpc_start * 1000, 1),
        "fdatasync_p50_ms": round(sync_p50, 3),
        "fdatasync_p99_ms": round(sync_p99, 3),
    }
    if jetstream is not None:
        figures.update(
            raw_jetstream_eps=round(jetstream["throughput"]),
            raw_jetstream_p50_ms=round(jetstream["p50_ms"], 3),
            raw_jetstream_p99_ms=round(jetstream["p99_ms"], 3),
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
