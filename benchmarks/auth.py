"""The cost of security: the secure default vs `--insecure`, in one run.

For each mode, starts a registry, an event bus and the gateway as separate processes on
free loopback ports (SQLite in a temporary directory), then measures from this process:

- gateway GET /domains/domain/{id} at concurrency 32 over keep-alive HTTP/1.1 connections
  (HTTPS with a bearer token in secure mode; every request is authenticated and checked
  against the access table by the gateway, and again by the registry);
- bus PublishBatch throughput: batches of 500 events, 4 calls in flight (mutual TLS and a
  token in secure mode; each call authenticated and each event's source_domain checked).

Secure mode is what `grace up` runs: a CA, a certificate per process, a token file.
Prints the figures and the ratios secure/insecure (targets: gateway >= 0.85x, bus >=
0.9x), then one JSON line. Bounded by request counts.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from google.protobuf import struct_pb2

from grace.eventbus.v1 import event_pb2, eventbus_pb2, eventbus_pb2_grpc
from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.channels import ClientSecurity, channel
from services.common.pki import SERVER_NAME, CertificateAuthority, Identity, leaf_files
from services.common.tokens import TokenStore

ROOT = Path(__file__).resolve().parents[1]
DOMAIN = "ai_domain"
GATEWAY_CONCURRENCY, GATEWAY_REQUESTS, WARMUP = 32, 6000, 300
BATCH, BATCHES, IN_FLIGHT = 500, 40, 4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Mode:
    """One deployment: its environment, the client credential and how to reach HTTP."""

    def __init__(self, secure: bool, data_dir: Path) -> None:
        self.secure = secure
        self.data_dir = data_dir
        self.client: ClientSecurity | None = None
        self.token = ""
        self.tls: ssl.SSLContext | None = None
        if secure:
            pki = data_dir / "pki"
            ca = CertificateAuthority.load_or_create(pki)
            for name in ("registry", "eventbus", "gateway"):
                ca.issue_files(
                    Identity("component", name), leaf_files(pki, Identity("component", name))
                )
            tool = leaf_files(pki, Identity("client", "bench"))
            ca.issue_files(Identity("client", "bench"), tool)
            self.token, _ = TokenStore(pki / "tokens.json").create("bench", ["admin"])
            self.client = ClientSecurity(tool.ca, tool.cert, tool.key, self.token)
            self.tls = ssl.create_default_context(cafile=str(tool.ca))

    def env(self, ports: dict[str, int]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "GRACE_"))}
        env["GRACE_DATA_DIR"] = str(self.data_dir)
        env["GRACE_GATEWAY_GOVERNANCE"] = "off"
        env["GRACE_IMMUNE_ADDR"] = "off"
        for name, port in ports.items():
            env[f"GRACE_{name.upper()}_PORT"] = str(port)
            env[f"GRACE_{name.upper()}_ADDR"] = f"127.0.0.1:{port}"
        if not self.secure:
            env["GRACE_INSECURE"] = "true"
        return env


async def http_get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> None:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.decode(errors="replace"))
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)


async def wait_ready(mode: Mode, ports: dict[str, int], deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1",
                ports["gateway"],
                ssl=mode.tls,
                server_hostname=SERVER_NAME if mode.tls else None,
            )
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")
            writer.close()
            break
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            await asyncio.sleep(0.1)
    else:
        raise SystemExit("the gateway did not start")
    for name in ("registry", "eventbus"):
        chan = channel(f"127.0.0.1:{ports[name]}", security=mode.client)
        await asyncio.wait_for(chan.channel_ready(), 30)
        await chan.close()


async def measure_gateway(mode: Mode, port: int) -> dict[str, float]:
    auth = f"Authorization: Bearer {mode.token}\r\n" if mode.secure else ""
    request = f"GET /domains/domain/{DOMAIN} HTTP/1.1\r\nHost: bench\r\n{auth}\r\n".encode()
    connections = [
        await asyncio.open_connection(
            "127.0.0.1", port, ssl=mode.tls, server_hostname=SERVER_NAME if mode.tls else None
        )
        for _ in range(GATEWAY_CONCURRENCY)
    ]
    latencies: list[float] = []

    async def run(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], count: int) -> None:
        remaining = count
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await http_get(conn[0], conn[1], request)
            latencies.append(time.perf_counter() - started)

    share = WARMUP // GATEWAY_CONCURRENCY + 1
    await asyncio.gather(*(run(c, share) for c in connections))
    latencies.clear()
    share = GATEWAY_REQUESTS // GATEWAY_CONCURRENCY
    started = time.perf_counter()
    await asyncio.gather(*(run(c, share) for c in connections))
    elapsed = time.perf_counter() - started
    for _, writer in connections:
        writer.close()
    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "rps": len(latencies) / elapsed,
    }


async def measure_bus(mode: Mode, address: str) -> dict[str, float]:
    data = struct_pb2.Struct()
    data.update({"prediction": "positive", "score": 0.9})
    batches = [
        eventbus_pb2.PublishBatchRequest(
            events=[
                event_pb2.Event(event_type="ml.prediction", source_domain=DOMAIN, data=data)
                for _ in range(BATCH)
            ]
        )
        for _ in range(BATCHES)
    ]
    async with channel(address, security=mode.client, max_message_bytes=64 << 20) as chan:
        stub = eventbus_pb2_grpc.EventBusServiceStub(chan)
        await stub.PublishBatch(batches[0])  # warm-up
        queue = list(batches[1:])

        async def worker() -> None:
            while queue:
                await stub.PublishBatch(queue.pop())

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
        elapsed = time.perf_counter() - started
    return {"events_per_s": (BATCHES - 1) * BATCH / elapsed}


async def run_mode(mode: Mode, ports: dict[str, int]) -> dict[str, dict[str, float]]:
    await wait_ready(mode, ports, time.monotonic() + 60)
    async with channel(f"127.0.0.1:{ports['registry']}", security=mode.client) as chan:
        await registry_pb2_grpc.RegistryServiceStub(chan).RegisterDomain(
            registry_pb2.RegisterDomainRequest(domain_id=DOMAIN, port=8202, capabilities=["ml"])
        )
    gateway = await measure_gateway(mode, ports["gateway"])
    bus = await measure_bus(mode, f"127.0.0.1:{ports['eventbus']}")
    return {"gateway_get_c32": gateway, "bus_publish_batch": bus}


def bench(secure: bool) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        mode = Mode(secure, Path(tmp))
        ports = {name: free_port() for name in ("registry", "eventbus", "gateway")}
        env = mode.env(ports)
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", module],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for module in ("services.registry", "services.eventbus", "gateway")
        ]
        try:
            return asyncio.run(run_mode(mode, ports))
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                process.wait(timeout=30)


def main() -> None:
    results = {"insecure": bench(False), "secure": bench(True)}
    print()
    print("secure default (mTLS, HTTPS, tokens, access table) vs --insecure, same run")
    print(f"{'mode':<10}{'GET p50 ms':>12}{'GET p99 ms':>12}{'GET req/s':>12}{'bus ev/s':>12}")
    for name, r in results.items():
        g, b = r["gateway_get_c32"], r["bus_publish_batch"]
        print(
            f"{name:<10}{g['p50_ms']:>12.2f}{g['p99_ms']:>12.2f}{g['rps']:>12.0f}"
            f"{b['events_per_s']:>12.0f}"
        )
    gateway_ratio = (
        results["secure"]["gateway_get_c32"]["rps"] / results["insecure"]["gateway_get_c32"]["rps"]
    )
    bus_ratio = (
        results["secure"]["bus_publish_batch"]["events_per_s"]
        / results["insecure"]["bus_publish_batch"]["events_per_s"]
    )
    print(
        f"gateway GET c32: secure = {gateway_ratio:.2f}x insecure (target >= 0.85); "
        f"bus PublishBatch: secure = {bus_ratio:.2f}x insecure (target >= 0.9)"
    )
    figures = {
        f"{mode}_{kind}": {k: round(v, 3) for k, v in r.items()}
        for mode, by_kind in results.items()
        for kind, r in by_kind.items()
    }
    print(
        json.dumps(
            {
                "benchmark": "auth",
                **figures,
                "gateway_rps_ratio": round(gateway_ratio, 3),
                "bus_throughput_ratio": round(bus_ratio, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
