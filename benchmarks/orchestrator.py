"""Orchestrator throughput and latency against no-op domains.

Starts a registry, three no-op domains and the orchestrator on loopback, then measures:

- raw: three sequential DomainService.Execute calls to the three domains (the baseline);
- seq3: a 3-step sequential workflow run with ExecuteWorkflow(wait=true), one client;
- fanout8: a 1-to-8 fan-out workflow (1 step, then 8 in parallel), one client;
  (these three take turns in short rounds, so they see the same load on a shared machine)
- the raw calls, seq3 and fanout8 again with 16 concurrent clients for 6 s each
  (`--duration`) (throughput; a 3-step workflow costs four round trips, ExecuteWorkflow
  and its three domain calls, against the raw scenario's three), with the CPU each
  process spent per operation when the servers run in processes of their own.

In two layouts, one after the other:

- processes: as Grace deploys them, the orchestrator in a process of its own, the
  registry and the domains in another, and the clients in this one;
- one_process: every server and the clients in this one interpreter, where the
  orchestrator shares one core with its domains and clients (the raw calls at 16 clients
  are then the ceiling of that process).

The orchestrator persists every transition (SQLite, WAL) and signs every proof, as in
production; its events stay in the outbox (no event bus is started). Prints a table per
layout with workflows/s, p50 and p99, the ratio of seq3's p50 to the raw calls' p50, the
CPU per operation and the rate it allows on this machine's cores (the processes layout),
and, as the last line, one JSON object with the figures of both layouts.

    python benchmarks/orchestrator.py [--duration SECONDS]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from _harness import DomainHost, cpu_seconds, server_config, stop_with_parent
from google.protobuf import json_format

from grace.domain.v1 import domain_pb2, domain_pb2_grpc
from grace.orchestrator.v1 import orchestrator_pb2 as pb
from grace.orchestrator.v1 import orchestrator_pb2_grpc
from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.channels import channel
from services.common.server import GraceServer
from services.orchestrator.config import OrchestratorConfig
from services.orchestrator.engine import OrchestratorSettings
from services.orchestrator.server import OrchestratorServer
from services.registry.config import RegistryConfig
from services.registry.registry import RegistrySettings
from services.registry.server import RegistryServer

DURATION_S = 6.0
CONCURRENCY = 16


class NoOpDomain(domain_pb2_grpc.DomainServiceServicer):
    """Answers every action at once with an empty output."""

    async def Execute(self, request: Any, context: Any) -> domain_pb2.ExecuteResponse:
        return domain_pb2.ExecuteResponse()

    async def Compensate(self, request: Any, context: Any) -> domain_pb2.CompensateResponse:
        return domain_pb2.CompensateResponse()


async def measure(
    call: Callable[[], Awaitable[None]],
    clients: int,
    duration: float | None = None,
    servers: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Runs `call` from `clients` concurrent clients for `duration` seconds.

    `duration` defaults to DURATION_S (the `--duration` flag). With `servers` (name -> pid
    of a server process), also the CPU each of them and this process (the clients) spent
    per call, in microseconds: on a machine with few cores their sum bounds the calls per
    second.
    """
    latencies: list[float] = []
    deadline = time.perf_counter() + (DURATION_S if duration is None else duration)

    async def client() -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - start)

    for _ in range(20):  # warm-up
        await call()
    cpu_before = {name: cpu_seconds(pid) for name, pid in (servers or {}).items()}
    client_before = time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - start
    cpu_s = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in (servers or {}).items()}
    cpu_s["client"] = time.process_time() - client_before
    latencies.sort()
    result: dict[str, Any] = {
        "per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "count": len(latencies),
    }
    if servers:
        result["cpu_us"] = {name: spent / len(latencies) * 1e6 for name, spent in cpu_s.items()}
    return result


async def interleaved(
    calls: dict[str, Callable[[], Awaitable[None]]], rounds: int = 30, per_round: int = 25
) -> dict[str, dict[str, float]]:
    """One client, the scenarios taking turns in short rounds, so that each sees the same
    machine load (the machine is shared: a ratio between runs minutes apart is noise)."""
    latencies: dict[str, list[float]] = {name: [] for name in calls}
    spent: dict[str, float] = dict.fromkeys(calls, 0.0)
    for call in calls.values():
        for _ in range(20):  # warm-up
            await call()
    for _ in range(rounds):
        for name, call in calls.items():
            for _ in range(per_round):
                start = time.perf_counter()
                await call()
                took = time.perf_counter() - start
                latencies[name].append(took)
                spent[name] += took
    results = {}
    for name, values in latencies.items():
        values.sort()
        results[name] = {
            "per_s": len(values) / spent[name],
            "p50_ms": statistics.median(values) * 1000,
            "p99_ms": values[int(len(values) * 0.99) - 1] * 1000,
            "count": len(values),
        }
    return results


def _registry(data: Path) -> RegistryServer:
    return RegistryServer(
        RegistryConfig(
            # Nothing listens here: the registry's lifecycle events stay in its outbox.
            server=replace(
                server_config("registry", data), env={"GRACE_EVENTBUS_ADDR": "127.0.0.1:9"}
            ),
            settings=RegistrySettings(default_lease_ttl_s=3600, deregister_after_s=3600),
        )
    )


@contextlib.asynccontextmanager
async def serve_domains(data: Path) -> AsyncIterator[dict[str, Any]]:
    """A registry and three registered no-op domains; yields their addresses."""
    registry = _registry(data)
    async with GraceServer(registry.config.server, registry) as reg_server:
        domains = [
            GraceServer(server_config(f"d{i}", data), DomainHost(NoOpDomain())) for i in range(3)
        ]
        for server in domains:
            await server.start()
        try:
            async with channel(reg_server.address) as reg_chan:
                reg = registry_pb2_grpc.RegistryServiceStub(reg_chan)
                for i, server in enumerate(domains):
                    await reg.RegisterDomain(
                        registry_pb2.RegisterDomainRequest(
                            domain_id=f"noop_{i}", host="127.0.0.1", port=server.port
                        )
                    )
            yield {"registry": reg_server.address, "domains": [s.address for s in domains]}
        finally:
            for server in domains:
                await server.stop(0.2)


@contextlib.asynccontextmanager
async def serve_orchestrator(data: Path, registry_address: str) -> AsyncIterator[dict[str, Any]]:
    """The orchestrator, finding the domains through the registry; yields its address and
    a function returning its commits so far."""
    orch = OrchestratorServer(
        OrchestratorConfig(
            server=server_config("orchestrator", data),
            settings=OrchestratorSettings(max_parallel_steps=16),
            registry_address=registry_address,
            key_file=data / "orchestrator.key",
            route_cache_s=60,
        )
    )
    async with GraceServer(orch.config.server, orch) as orch_server:
        yield {"orchestrator": orch_server.address, "commits": lambda: orch.store.commits}


async def serve_role(role: str, data: Path, registry_address: str) -> None:
    """The servers of `role` in this process (a child of the benchmark): prints their
    addresses as one JSON line, serves until its standard input closes, then prints the
    orchestrator's commits and stops."""
    serving = (
        serve_domains(data) if role == "domains" else serve_orchestrator(data, registry_address)
    )
    async with serving as served:
        commits = served.pop("commits", lambda: 0)
        print(json.dumps(served), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        print(json.dumps({"commits": commits()}), flush=True)


class Child:
    """A child process of the benchmark serving one role (see `serve_role`)."""

    def __init__(self, proc: asyncio.subprocess.Process, served: dict[str, Any]) -> None:
        self.proc = proc
        self.served = served

    @classmethod
    async def start(cls, role: str, data: Path, registry_address: str = "") -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--serve",
            role,
            str(data),
            registry_address,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            preexec_fn=stop_with_parent,
        )
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if not line:
            raise RuntimeError(f"the {role} process exited before it served")
        return cls(proc, json.loads(line))

    async def stop(self) -> dict[str, Any]:
        """Closes its standard input; returns what it printed last."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.close()
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        await asyncio.wait_for(self.proc.wait(), 30)
        return json.loads(line) if line else {}


async def run_scenarios(
    domain_addresses: Sequence[str],
    orchestrator_address: str,
    servers: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Every scenario, from this process, against servers at these addresses (whose
    processes, when they have their own, are `servers`: name -> pid)."""
    chans = [channel(address) for address in domain_addresses]
    stubs = [domain_pb2_grpc.DomainServiceStub(c) for c in chans]
    orch_chan = channel(orchestrator_address)
    stub = orchestrator_pb2_grpc.OrchestratorServiceStub(orch_chan)
    try:

        async def raw() -> None:
            for i, s in enumerate(stubs):
                await s.Execute(
                    domain_pb2.ExecuteRequest(
                        domain_id=f"noop_{i}", action="noop", idempotency_key="k"
                    )
                )

        seq = json_format.ParseDict(
            {
                "name": "seq3",
                "steps": [
                    {"domain_id": "noop_0", "action": "a"},
                    {"domain_id": "noop_1", "action": "b", "depends_on": ["step_1"]},
                    {"domain_id": "noop_2", "action": "c", "depends_on": ["step_2"]},
                ],
            },
            pb.CreateWorkflowRequest(),
        )
        fan = json_format.ParseDict(
            {
                "name": "fanout8",
                "steps": [
                    {"domain_id": "noop_0", "action": "root"},
                    *(
                        {"domain_id": f"noop_{i % 3}", "action": "leaf", "depends_on": ["step_1"]}
                        for i in range(8)
                    ),
                ],
            },
            pb.CreateWorkflowRequest(),
        )
        seq_id = (await stub.CreateWorkflow(seq)).workflow_id
        fan_id = (await stub.CreateWorkflow(fan)).workflow_id

        def runner(workflow_id: str) -> Callable[[], Awaitable[None]]:
            async def one() -> None:
                r = await stub.ExecuteWorkflow(
                    pb.ExecuteWorkflowRequest(workflow_id=workflow_id, wait=True)
                )
                assert r.execution.state == pb.EXECUTION_STATE_SUCCEEDED

            return one

        results: dict[str, Any] = await interleaved(
            {"raw3_1": raw, "seq3_1": runner(seq_id), "fanout8_1": runner(fan_id)}
        )
        results["raw3_16"] = await measure(raw, CONCURRENCY, servers=servers)
        results["seq3_16"] = await measure(runner(seq_id), CONCURRENCY, servers=servers)
        results["fanout8_16"] = await measure(runner(fan_id), CONCURRENCY, servers=servers)
    finally:
        await orch_chan.close()
        for c in chans:
            await c.close()
    results["ratio_p50_seq3_vs_raw3"] = results["seq3_1"]["p50_ms"] / results["raw3_1"]["p50_ms"]
    return results


async def in_one_process(data: Path) -> dict[str, Any]:
    """Every server and the clients in this one interpreter."""
    async with (
        serve_domains(data) as domains,
        serve_orchestrator(data, domains["registry"]) as orch,
    ):
        results = await run_scenarios(domains["domains"], orch["orchestrator"])
        results["commits"] = orch["commits"]()
    return results


async def in_processes(data: Path) -> dict[str, Any]:
    """As deployed: the orchestrator, the domains (with the registry) and the clients each
    in a process of their own."""
    domains = await Child.start("domains", data)
    try:
        orch = await Child.start("orchestrator", data, domains.served["registry"])
        try:
            results = await run_scenarios(
                domains.served["domains"],
                orch.served["orchestrator"],
                {"orchestrator": orch.proc.pid, "domains": domains.proc.pid},
            )
        finally:
            results_of_orch = await orch.stop()
    finally:
        await domains.stop()
    results["commits"] = results_of_orch.get("commits", 0)
    return results


async def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="grace-bench-") as root:
        (Path(root) / "one").mkdir()
        (Path(root) / "apart").mkdir()
        return {
            "processes": await in_processes(Path(root) / "apart"),
            "one_process": await in_one_process(Path(root) / "one"),
        }


LAYOUTS = (
    ("processes", "orchestrator, domains and clients in processes of their own (as deployed)"),
    ("one_process", "every server and the clients in one interpreter"),
)


def report(results: dict[str, Any]) -> None:
    cores = os.cpu_count() or 1
    rows = [
        ("raw 3 sequential calls", "raw3_1", 1),
        ("raw 3 sequential calls", "raw3_16", CONCURRENCY),
        ("3-step workflow", "seq3_1", 1),
        ("3-step workflow", "seq3_16", CONCURRENCY),
        ("1-to-8 fan-out", "fanout8_1", 1),
        ("1-to-8 fan-out", "fanout8_16", CONCURRENCY),
    ]
    for layout, title in LAYOUTS:
        figures = results[layout]
        print(f"\n{title}:")
        print(f"{'scenario':<24}{'clients':>8}{'per s':>10}{'p50 ms':>10}{'p99 ms':>10}")
        for label, key, clients in rows:
            r = figures[key]
            print(
                f"{label:<24}{clients:>8}{r['per_s']:>10.1f}{r['p50_ms']:>10.2f}"
                f"{r['p99_ms']:>10.2f}"
            )
        print(
            f"p50 of a 3-step workflow / p50 of 3 raw calls: "
            f"{figures['ratio_p50_seq3_vs_raw3']:.2f}x (target <= 2x); "
            f"3-step workflows/s at {CONCURRENCY} clients: {figures['seq3_16']['per_s']:.0f} "
            f"(target >= 700; raw 3 calls/s at {CONCURRENCY} clients: "
            f"{figures['raw3_16']['per_s']:.0f}); {figures['commits']} commits"
        )
        if "cpu_us" not in figures["seq3_16"]:
            continue  # one process: its CPU is everyone's
        print(
            f"CPU per operation at {CONCURRENCY} clients, and the rate it allows on {cores} cores:"
        )
        for label, key, _ in rows[1::2]:
            spent = figures[key]["cpu_us"]
            total = sum(spent.values())
            parts = " + ".join(f"{name} {us:,.0f}" for name, us in spent.items())
            print(f"  {label:<24}{parts} = {total:,.0f} us -> at most {cores / total * 1e6:,.0f}/s")
    print(json.dumps({"benchmark": "orchestrator", **results}, sort_keys=True))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--serve",
        nargs=3,
        metavar=("ROLE", "DATA_DIR", "REGISTRY"),
        help="internal: serve one role in a child process of the benchmark",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=DURATION_S,
        help=f"seconds of each {CONCURRENCY}-client phase (default {DURATION_S:g})",
    )
    args = parser.parse_args()
    DURATION_S = args.duration
    if args.serve:
        role, data, registry_address = args.serve
        asyncio.run(serve_role(role, Path(data), registry_address))
    else:
        report(asyncio.run(main()))
