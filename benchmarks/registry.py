"""Registry lookups against a no-op gRPC call, measured in the same run.

With 1,000 registered domains (2 capabilities each out of 100, so about 20 candidates per
capability), measures p50/p99 latency of sequential GetDomain and FindByCapability calls
(all candidates, and limit=3 as a router would ask) against the p50 of a no-op unary call
to a bare grpc.aio server in the same process. Target: FindByCapability p50 within 1.5x of
the no-op call.

    python benchmarks/registry.py [--calls N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.channels import channel
from services.common.config import ServerConfig
from services.common.server import GraceServer
from services.registry.config import RegistryConfig
from services.registry.registry import RegistrySettings
from services.registry.server import RegistryServer

DOMAINS = 1000
CAPABILITIES = 100


class NoOp(registry_pb2_grpc.RegistryServiceServicer):
    """A bare servicer: the cheapest possible unary call on the same messages."""

    async def GetRegistryStats(self, request: Any, context: Any) -> Any:
        return registry_pb2.GetRegistryStatsResponse()


async def measure(call: Callable[[], Awaitable[object]], calls: int) -> dict[str, float]:
    for _ in range(min(200, calls)):
        await call()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    return {
        "p50_us": statistics.median(samples),
        "p99_us": samples[int(len(samples) * 0.99) - 1],
        "calls_per_s": len(samples) / (sum(samples) / 1e6),
    }


async def main(calls: int) -> None:
    bare = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(NoOp(), bare)
    bare_port = bare.add_insecure_port("127.0.0.1:0")
    await bare.start()

    with tempfile.TemporaryDirectory() as data_dir:
        server_config = ServerConfig(
            service="registry",
            port=0,
            data_dir=Path(data_dir),
            database_url=f"sqlite+aiosqlite:///{data_dir}/registry.db",
            # No event bus runs here: lifecycle events wait in the outbox.
            env={"GRACE_EVENTBUS_ADDR": "127.0.0.1:9"},
        )
        config = RegistryConfig(
            server=server_config, settings=RegistrySettings(default_lease_ttl_s=3600)
        )
        service = RegistryServer(config)
        async with (
            GraceServer(server_config, service) as server,
            channel(server.address) as chan,
            channel(f"127.0.0.1:{bare_port}") as raw,
        ):
            stub = registry_pb2_grpc.RegistryServiceStub(chan)
            noop = registry_pb2_grpc.RegistryServiceStub(raw)
            for i in range(DOMAINS):
                await stub.RegisterDomain(
                    registry_pb2.RegisterDomainRequest(
                        domain_id=f"domain_{i:04d}",
                        port=9000 + i,
                        capabilities=[
                            f"cap_{i % CAPABILITIES}",
                            f"cap_{(i * 7 + 3) % CAPABILITIES}",
                        ],
                    )
                )
            found = await stub.FindByCapability(
                registry_pb2.FindByCapabilityRequest(capability="cap_42")
            )
            candidates = len(found.domains)
            results = {
                "noop": await measure(
                    lambda: noop.GetRegistryStats(registry_pb2.GetRegistryStatsRequest()), calls
                ),
                "get_domain": await measure(
                    lambda: stub.GetDomain(registry_pb2.GetDomainRequest(domain_id="domain_0500")),
                    calls,
                ),
                "find_by_capability": await measure(
                    lambda: stub.FindByCapability(
                        registry_pb2.FindByCapabilityRequest(capability="cap_42")
                    ),
                    calls,
                ),
                "find_by_capability_limit3": await measure(
                    lambda: stub.FindByCapability(
                        registry_pb2.FindByCapabilityRequest(capability="cap_42", limit=3)
                    ),
                    calls,
                ),
            }
    await bare.stop(0)

    base = results["noop"]["p50_us"]
    print(
        f"registry benchmark: {DOMAINS} domains, {candidates} candidates for cap_42, "
        f"{calls} sequential calls each, client and servers in one process"
    )
    print(f"{'call':<28}{'p50 us':>10}{'p99 us':>10}{'calls/s':>10}{'p50 / no-op':>13}")
    for name, figures in results.items():
        figures["ratio_to_noop_p50"] = figures["p50_us"] / base
        print(
            f"{name:<28}{figures['p50_us']:>10.0f}{figures['p99_us']:>10.0f}"
            f"{figures['calls_per_s']:>10.0f}{figures['ratio_to_noop_p50']:>13.2f}"
        )
    target = results["find_by_capability"]["ratio_to_noop_p50"] <= 1.5
    print(f"target FindByCapability p50 <= 1.5x no-op: {'met' if target else 'NOT met'}")
    print(
        json.dumps(
            {
                "benchmark": "registry",
                "domains": DOMAINS,
                "candidates": candidates,
                "calls": calls,
                "results": results,
                "target_met": target,
            }
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    asyncio.run(main(parser.parse_args().calls))
