"""Health federation probe traffic per member, at two fleet sizes, in one process.

Starts a real registry and N members (each a gRPC server with PeerHealthService, running
the member loop of every SDK domain and kernel) on loopback, lets them probe each other for
a fixed time, and reports per member per second: direct pings sent, indirect probes asked,
probes run on others' behalf, and registry reads, plus any suspicion raised (a false
positive: nobody is down). Then one member stops serving, and the time until the registry
confirms it down is measured (1 s interval; Lifeguard's suspicion timeout, 2 s once every
observer agrees, 6 s for a lone suspicion).

The baseline is the same measure at the smaller fleet in the same run; the target is
traffic per member that does not grow with the fleet (ratio about 1), where the seed's
every-domain-checks-every-peer design grows as N - 1.

    python benchmarks/federation.py [--sizes 10 50] [--seconds 10] [--interval 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import grpc

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from grace.registry.v1 import registry_pb2, registry_pb2_grpc  # noqa: E402
from services.common.channels import channel  # noqa: E402
from services.common.config import ServerConfig  # noqa: E402
from services.common.membership import MemberSettings  # noqa: E402
from services.common.peer_health import (  # noqa: E402
    MEMBER_METADATA,
    PeerHealth,
    PeerHealthSettings,
)
from services.common.server import GraceServer  # noqa: E402
from services.registry.config import RegistryConfig  # noqa: E402
from services.registry.registry import RegistrySettings  # noqa: E402
from services.registry.server import RegistryServer  # noqa: E402


async def run_fleet(size: int, seconds: float, interval_s: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        config = RegistryConfig(
            server=ServerConfig(
                service="registry",
                host="127.0.0.1",
                port=0,
                data_dir=Path(tmp),
                database_url=f"sqlite+aiosqlite:///{tmp}/registry.db",
                env={"GRACE_EVENTBUS_ADDR": "127.0.0.1:9"},
            ),
            settings=RegistrySettings(),
        )
        registry = RegistryServer(config)
        registry_server = GraceServer(config.server, registry)
        await registry_server.start()
        registry_address = f"127.0.0.1:{registry_server.port}"
        settings = PeerHealthSettings(member=MemberSettings(interval_s=interval_s))
        members: list[tuple[PeerHealth, grpc.aio.Server]] = []
        registry_chan = channel(registry_address)
        stub = registry_pb2_grpc.RegistryServiceStub(registry_chan)
        try:
            for i in range(size):
                member = PeerHealth(f"member_{i:03d}", settings)
                server = grpc.aio.server()
                member.add_to_server(server)
                port = server.add_insecure_port("127.0.0.1:0")
                await server.start()
                await stub.RegisterDomain(
                    registry_pb2.RegisterDomainRequest(
                        domain_id=f"member_{i:03d}",
                        host="127.0.0.1",
                        port=port,
                        metadata=MEMBER_METADATA,
                    )
                )
                members.append((member, server))
            for member, _ in members:
                member.start(registry_chan)
            await asyncio.sleep(2 * settings.member.refresh_s / 5 + interval_s)  # warm-up
            before = [
                (
                    m.member.counters.pings,
                    m.member.counters.indirect_probes,
                    m.member.counters.probes_on_behalf,
                )
                for m, _ in members
            ]
            started = time.perf_counter()
            await asyncio.sleep(seconds)
            elapsed = time.perf_counter() - started
            after = [
                (
                    m.member.counters.pings,
                    m.member.counters.indirect_probes,
                    m.member.counters.probes_on_behalf,
                )
                for m, _ in members
            ]
            suspicions = sum(m.member.counters.suspicions for m, _ in members)
            # Then one member stops serving: how long until its peers confirm it down?
            victim, victim_server = members[size // 2]
            await victim.stop()
            await victim_server.stop(None)
            stopped_at = time.perf_counter()
            confirm_s = float("nan")
            while time.perf_counter() - stopped_at < 60:
                found = await registry.federation.suspicion(victim.member.member_id)
                if found is not None and found.state.value == "CONFIRMED_DOWN":
                    confirm_s = time.perf_counter() - stopped_at
                    break
                await asyncio.sleep(0.05)
        finally:
            for member, server in members:
                await member.stop()
                await server.stop(None)
            await registry_chan.close()
            await registry_server.stop()
    per = [
        tuple(a - b for a, b in zip(x, y, strict=True)) for x, y in zip(after, before, strict=True)
    ]
    refreshes_per_s = 2 / settings.member.refresh_s  # ListDomains + ListSuspicions
    return {
        "members": size,
        "pings_per_member_s": sum(p[0] for p in per) / size / elapsed,
        "indirect_per_member_s": sum(p[1] for p in per) / size / elapsed,
        "on_behalf_per_member_s": sum(p[2] for p in per) / size / elapsed,
        "max_pings_one_member_s": max(p[0] for p in per) / elapsed,
        "registry_reads_per_member_s": refreshes_per_s,
        "all_pairs_pings_per_member_s": (size - 1) / interval_s,
        "false_suspicions": suspicions,
        "time_to_confirmed_down_s": confirm_s,
    }


async def main(sizes: list[int], seconds: float, interval_s: float) -> None:
    results = [await run_fleet(size, seconds, interval_s) for size in sizes]
    print(
        f"health federation: {seconds:.0f} s per fleet, probe interval {interval_s} s, "
        "k = 3 observers, members and registry in one process on loopback"
    )
    header = f"{'members':>8}{'pings/s':>10}{'indirect/s':>12}{'on behalf/s':>13}"
    print(header + f"{'all-pairs/s':>13}{'false susp.':>13}{'confirm s':>11}")
    for r in results:
        print(
            f"{r['members']:>8.0f}{r['pings_per_member_s']:>10.2f}"
            f"{r['indirect_per_member_s']:>12.2f}{r['on_behalf_per_member_s']:>13.2f}"
            f"{r['all_pairs_pings_per_member_s']:>13.1f}{r['false_suspicions']:>13.0f}"
            f"{r['time_to_confirmed_down_s']:>11.2f}"
        )
    base = results[0]["pings_per_member_s"]
    ratio = results[-1]["pings_per_member_s"] / base if base else 0.0
    target = 0.8 <= ratio <= 1.25 and all(r["false_suspicions"] == 0 for r in results)
    print(
        f"pings per member at {sizes[-1]} / at {sizes[0]} members: {ratio:.2f} "
        f"(target about 1, no false suspicion: {'met' if target else 'NOT met'})"
    )
    print(
        json.dumps(
            {
                "benchmark": "federation",
                "seconds": seconds,
                "interval_s": interval_s,
                "results": results,
                "ratio_largest_to_smallest": ratio,
                "target_met": target,
            }
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args()
    asyncio.run(main(args.sizes, args.seconds, args.interval))
