"""The shared port's relay: gRPC calls through it, against the same calls made directly.

A kernel that answers plain HTTP on its gRPC port (the librarian) puts `SharedPort` in
front of its gRPC server, and every gRPC byte to it (the event bus's deliveries included)
is relayed. A child process serves a gRPC echo method on its own port and, in front of
it, a shared port, as the librarian does; this process calls the echo with a mix of 1 KiB
and 16 KiB messages, `--clients` calls in flight, first directly (the baseline), then
through the relay, alternating, `--runs` times each. For each run it reads from the child:

  - its CPU per call (the relay's cost is the difference to the direct runs);
  - its C allocator's bytes in use and freed-but-kept (`mallinfo2`), and its PSS, before
    and after: what the relay leaves behind in the process after the calls end.

    .venv/bin/python benchmarks/shared_port.py [--calls 20000] [--clients 16] [--runs 3]

Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

import grpc  # noqa: E402

from services.common.allocator import native_memory, release_free_memory  # noqa: E402
from services.common.shared_port import SharedPort  # noqa: E402

METHOD = "/bench.Echo/Echo"
SIZES = (1024, 1024, 1024, 16384)  # most deliveries are small, some are not


async def _not_http(path: str, query: Any) -> tuple[int, Any]:
    return 404, {}


async def serve() -> None:
    """The child: a gRPC echo and a shared port in front of it, until stdin ends. Each
    line on stdin asks for its figures."""

    async def echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return request

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
            )
        ]
    )
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    front = SharedPort("127.0.0.1", 0, f"127.0.0.1:{grpc_port}", _not_http)
    shared_port = await front.start()
    print(json.dumps({"direct": grpc_port, "relayed": shared_port}), flush=True)
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline):
        release_free_memory()  # what is left after a trim, as servers do every 30 s
        stats = native_memory()
        stats["cpu_s"] = time.process_time()
        print(json.dumps(stats), flush=True)
    await front.close()
    await server.stop(0)


class Child:
    def __init__(self, proc: asyncio.subprocess.Process, ports: dict[str, int]) -> None:
        self.proc = proc
        self.ports = ports

    @classmethod
    async def start(cls) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--serve",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        return cls(proc, json.loads(await proc.stdout.readline()))

    async def stats(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(b"stats\n")
        await self.proc.stdin.drain()
        result: dict[str, Any] = json.loads(await self.proc.stdout.readline())
        return result

    async def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        await self.proc.wait()


async def calls(port: int, total: int, clients: int) -> float:
    """Makes `total` echo calls, `clients` at a time, on one channel; returns calls/s."""
    payloads = [bytes(size) for size in SIZES]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        echo: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(METHOD)
        await echo(b"warm")
        next_call = 0

        async def client() -> None:
            nonlocal next_call
            while next_call < total:
                payload = payloads[next_call % len(payloads)]
                next_call += 1
                answer = await echo(payload)
                assert len(answer) == len(payload)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return total / (time.perf_counter() - started)


async def main(options: argparse.Namespace) -> None:
    child = await Child.start()
    figures: dict[str, list[dict[str, float]]] = {"direct": [], "relayed": []}
    try:
        for mode in figures:  # a first use of each path allocates what it keeps: not counted
            await calls(child.ports[mode], options.calls // 4, options.clients)
        for _ in range(options.runs):
            for mode in figures:
                before = await child.stats()
                rate = await calls(child.ports[mode], options.calls, options.clients)
                after = await child.stats()
                figures[mode].append(
                    {
                        "calls_per_s": rate,
                        "cpu_us_per_call": (after["cpu_s"] - before["cpu_s"]) / options.calls * 1e6,
                        "malloc_in_use_kb": (after["malloc_in_use"] - before["malloc_in_use"])
                        / 1024,
                        "malloc_free_kb": (after["malloc_free"] - before["malloc_free"]) / 1024,
                        "pss_kb": (after["pss"] - before["pss"]) / 1024,
                    }
                )
                run = figures[mode][-1]
                print(
                    f"{mode:<8} {rate:8,.0f} calls/s; server process: "
                    f"{run['cpu_us_per_call']:.0f} us CPU/call, malloc in use "
                    f"{run['malloc_in_use_kb']:+,.0f} kB, kept free {run['malloc_free_kb']:+,.0f}"
                    f" kB, PSS {run['pss_kb']:+,.0f} kB",
                    flush=True,
                )
    finally:
        await child.stop()
    medians = {
        mode: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        for mode, runs in figures.items()
    }
    direct, relayed = medians["direct"], medians["relayed"]
    print(
        f"\nmedians of {options.runs} runs, {options.calls:,} calls, {options.clients} in flight:"
        f"\n  relayed / direct calls/s: {relayed['calls_per_s'] / direct['calls_per_s']:.2f}x"
        f"\n  the relay's CPU per call: "
        f"{relayed['cpu_us_per_call'] - direct['cpu_us_per_call']:.1f} us"
        f"\n  left in the server process after a relayed run (after a trim): malloc in use "
        f"{relayed['malloc_in_use_kb']:+,.0f} kB, kept free {relayed['malloc_free_kb']:+,.0f} "
        f"kB, PSS {relayed['pss_kb']:+,.0f} kB"
    )
    print(
        json.dumps(
            {
                "benchmark": "shared_port",
                "calls": options.calls,
                "clients": options.clients,
                "runs": options.runs,
                "direct_calls_per_s": round(direct["calls_per_s"]),
                "relayed_calls_per_s": round(relayed["calls_per_s"]),
                "relay_cpu_us_per_call": round(
                    relayed["cpu_us_per_call"] - direct["cpu_us_per_call"], 1
                ),
                "relayed_malloc_free_kb": round(relayed["malloc_free_kb"]),
                "relayed_malloc_in_use_kb": round(relayed["malloc_in_use_kb"]),
                "relayed_pss_kb": round(relayed["pss_kb"]),
            }
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    asyncio.run(serve() if parsed.serve else main(parsed))
