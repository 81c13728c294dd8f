"""Gateway overhead: GET /domains/domain/{id} through the gateway vs the same gRPC call direct.

Starts a registry and a gateway as separate processes on free loopback ports (SQLite in a
temporary directory), registers one domain, then measures, in this process, the same read
both ways at concurrency 1 and 32: p50, p99, requests/s, and the ratios gateway/direct,
with the CPU the client, the registry and the gateway each used per request (the three
share the machine's cores, so at concurrency 32 their sum bounds requests/s).
The HTTP client is a minimal keep-alive HTTP/1.1 client on asyncio streams so that the
figures measure the gateway rather than an HTTP client library. Bounded by request counts.

Grace is secure by default, and so is this benchmark (as `grace up` runs it): a CA and a
certificate per process, HTTPS with a bearer token to the gateway, mutual TLS with the same
token for the direct calls; `--insecure` measures both paths in plaintext instead.
"""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from _harness import cpu_seconds
from auth import Mode, free_port
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.channels import channel
from services.common.pki import SERVER_NAME

ROOT = Path(__file__).resolve().parents[1]
DOMAIN = "ai_domain"
PLAN = [(1, 1500), (32, 12000)]  # (concurrency, requests)
WARMUP = 300


async def wait_http(mode: Mode, port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            reader, writer = await HttpConnection.streams(mode, port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")
            writer.close()
            return
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            await asyncio.sleep(0.1)
    raise SystemExit("the gateway did not start")


class HttpConnection:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @staticmethod
    async def streams(mode: Mode, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(
            "127.0.0.1", port, ssl=mode.tls, server_hostname=SERVER_NAME if mode.tls else None
        )

    @classmethod
    async def open(cls, mode: Mode, port: int) -> HttpConnection:
        return cls(*await cls.streams(mode, port))

    async def get(self, request: bytes) -> bytes:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.decode(errors="replace"))
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def wait_serving(mode: Mode, address: str, deadline: float) -> None:
    """Until the health service says SERVING: a ready channel may still refuse calls while
    the server starts."""
    async with channel(address, security=mode.client) as chan:
        health = health_pb2_grpc.HealthStub(chan)
        while True:
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{address} did not become SERVING")
            await asyncio.sleep(0.1)


async def measure(
    concurrency: int,
    total: int,
    make_worker: Callable[[], Awaitable[Callable[[], Awaitable[None]]]],
    servers: dict[str, int] | None = None,
) -> dict[str, float]:
    """p50, p99 and requests/s of `total` calls from `concurrency` workers; with `servers`
    (name to pid), also the CPU each server and this client used per request, in µs: on a
    2-core machine the three processes share the cores, so requests/s is bounded by their
    sum."""
    calls = [await make_worker() for _ in range(concurrency)]
    latencies: list[float] = []
    remaining = total
    servers = servers or {}

    async def run(call: Callable[[], Awaitable[None]]) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    cpu_before = {name: cpu_seconds(pid) for name, pid in servers.items()}
    client_before = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(run(c) for c in calls))
    elapsed = time.perf_counter() - started
    cpu_us = {
        f"{name}_cpu_us": (cpu_seconds(pid) - cpu_before[name]) / total * 1e6
        for name, pid in servers.items()
    }
    cpu_us["client_cpu_us"] = (time.process_time() - client_before) / total * 1e6
    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "rps": len(latencies) / elapsed,
        **cpu_us,
    }


async def bench(
    mode: Mode, gateway_port: int, registry_address: str, servers: dict[str, int]
) -> dict[str, dict[str, float]]:
    chan = channel(registry_address, security=mode.client)
    stub = registry_pb2_grpc.RegistryServiceStub(chan)
    await stub.RegisterDomain(
        registry_pb2.RegisterDomainRequest(domain_id=DOMAIN, port=8202, capabilities=["ml"])
    )
    auth = f"Authorization: Bearer {mode.token}\r\n" if mode.secure else ""
    request = f"GET /domains/domain/{DOMAIN} HTTP/1.1\r\nHost: bench\r\n{auth}\r\n".encode()
    connections: list[HttpConnection] = []

    async def http_worker() -> Callable[[], Awaitable[None]]:
        connection = await HttpConnection.open(mode, gateway_port)
        connections.append(connection)

        async def call() -> None:
            await connection.get(request)

        return call

    async def grpc_worker() -> Callable[[], Awaitable[None]]:
        message = registry_pb2.GetDomainRequest(domain_id=DOMAIN)

        async def call() -> None:
            await stub.GetDomain(message)

        return call

    await measure(4, WARMUP, http_worker)
    await measure(4, WARMUP, grpc_worker)
    results: dict[str, dict[str, float]] = {}
    for concurrency, total in PLAN:
        results[f"grpc_c{concurrency}"] = await measure(concurrency, total, grpc_worker, servers)
        results[f"gateway_c{concurrency}"] = await measure(concurrency, total, http_worker, servers)
    for connection in connections:
        connection.close()
    await chan.close()
    return results


def main() -> None:
    secure = "--insecure" not in sys.argv[1:]
    python = sys.executable
    with tempfile.TemporaryDirectory() as data_dir:
        mode = Mode(secure, Path(data_dir))
        ports = {name: free_port() for name in ("registry", "gateway")}
        env = mode.env(ports)
        processes = [
            subprocess.Popen([python, "-m", module], cwd=ROOT, env=env)
            for module in ("services.registry", "gateway")
        ]
        registry_address = f"127.0.0.1:{ports['registry']}"
        try:

            async def run() -> dict[str, dict[str, float]]:
                await wait_http(mode, ports["gateway"], time.monotonic() + 30)
                await wait_serving(mode, registry_address, time.monotonic() + 30)
                servers = {"registry": processes[0].pid, "gateway": processes[1].pid}
                return await bench(mode, ports["gateway"], registry_address, servers)

            results = asyncio.run(run())
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                process.wait(timeout=30)
    print()
    print(
        "GET /domains/domain/{id}: gateway (HTTP/JSON) vs direct gRPC, same run, "
        + ("secure (HTTPS + token; mTLS + token)" if secure else "insecure")
    )
    print(
        f"{'path':<10}{'conc':>6}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}"
        "   CPU us/request: client registry gateway"
    )
    for concurrency, _ in PLAN:
        for kind in ("grpc", "gateway"):
            r = results[f"{kind}_c{concurrency}"]
            print(
                f"{kind:<10}{concurrency:>6}{r['p50_ms']:>10.3f}{r['p99_ms']:>10.3f}"
                f"{r['rps']:>10.0f}{r['client_cpu_us']:>24.0f}{r['registry_cpu_us']:>9.0f}"
                f"{r['gateway_cpu_us']:>8.0f}"
            )
    ratios: dict[str, float] = {}
    for concurrency, _ in PLAN:
        g, d = results[f"gateway_c{concurrency}"], results[f"grpc_c{concurrency}"]
        ratios[f"p50_ratio_c{concurrency}"] = g["p50_ms"] / d["p50_ms"]
        ratios[f"rps_ratio_c{concurrency}"] = g["rps"] / d["rps"]
        print(
            f"concurrency {concurrency}: gateway p50 = {ratios[f'p50_ratio_c{concurrency}']:.2f}x "
            f"direct, throughput = {ratios[f'rps_ratio_c{concurrency}']:.2f}x direct"
        )
    print(
        "targets: p50 within 2x of direct gRPC; requests/s at concurrency 32 >= 0.8x direct "
        f"(measured {ratios['rps_ratio_c32']:.2f}x, {results['gateway_c32']['rps']:.0f} req/s)"
    )
    figures = {k: {m: round(v, 3) for m, v in r.items()} for k, r in results.items()}
    print(
        json.dumps(
            {
                "benchmark": "gateway",
                "secure": secure,
                **figures,
                **{k: round(v, 3) for k, v in ratios.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
