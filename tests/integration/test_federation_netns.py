"""The health federation across hosts: members in separate network namespaces joined by
veth pairs to one bridge, the registry on the bridge.

One lossy link (`tc netem`) must not confirm anyone down; cutting the link between the
suspect and one of its observers must not even raise a suspicion (the observer's indirect
probes through other members still reach the suspect); isolating the suspect from everyone
must confirm it down, by at least two distinct observers.
Needs root and `ip netns`; skipped where namespaces cannot be made. The addresses are on a
private bridge that exists only for the test.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.observers import observers_of
from services.registry.server import RegistryServer
from tests.netns import Network, ip, private_network
from tests.registry.conftest import registry_config
from tests.support import serving

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MEMBERS = 5
SUBNET = "10.231.77"
TAG = f"gf{os.getpid() % 10000}"


@pytest.fixture
def network() -> Iterator[Network]:
    with private_network([f"member_{i}" for i in range(MEMBERS)], SUBNET, TAG) as made:
        yield made


async def _suspicions(
    stub: registry_pb2_grpc.RegistryServiceAsyncStub,
) -> dict[str, registry_pb2.Suspicion]:
    listed = await stub.ListSuspicions(registry_pb2.ListSuspicionsRequest())
    return {s.suspect_id: s for s in listed.suspicions}


@asynccontextmanager
async def federation(
    network: Network, tmp_path: Path
) -> AsyncIterator[registry_pb2_grpc.RegistryServiceAsyncStub]:
    """The registry on the bridge and one member process per namespace, all ready and
    quiet (no suspicion) before the test acts."""
    config = registry_config(tmp_path)
    # Plaintext: the members are bare processes without certificates (the federation's
    # behaviour across a cut link does not depend on TLS; authentication is tested apart).
    config = replace(
        config, server=replace(config.server, host=network.bridge_address, security=None)
    )
    registry = RegistryServer(config)
    env = {
        **os.environ,
        "GRACE_FEDERATION_INTERVAL_S": "0.5",
        "GRACE_FEDERATION_SUSPICION_TIMEOUT_S": "2",
        "GRACE_FEDERATION_REFRESH_S": "1",
        "PYTHONPATH": str(PROJECT_ROOT),
    }
    async with (
        serving(config.server, registry) as (server, _),
        grpc.aio.insecure_channel(server.address) as chan,
    ):
        stub: registry_pb2_grpc.RegistryServiceAsyncStub = registry_pb2_grpc.RegistryServiceStub(
            chan
        )
        processes = [
            await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", ns, sys.executable, "-m",
                "tests.integration.federation_member",
                member, network.addresses[member], server.address,
                cwd=PROJECT_ROOT, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )
            for member, ns in network.namespaces.items()
        ]  # fmt: skip
        try:
            for process in processes:
                assert process.stdout is not None
                line = await asyncio.wait_for(process.stdout.readline(), 60)
                assert b"member ready" in line, line
            await asyncio.sleep(3.0)
            assert await _suspicions(stub) == {}
            yield stub
        finally:
            for process in processes:
                if process.returncode is None:
                    process.terminate()
            for process in processes:
                try:
                    await asyncio.wait_for(process.wait(), 10)
                except TimeoutError:
                    process.kill()
                    await process.wait()


def _netem_available() -> bool:
    probe = f"{TAG}tc"
    try:
        ip("link", "add", probe, "type", "dummy")
        ip("link", "set", probe, "up")
        subprocess.run(
            ["tc", "qdisc", "add", "dev", probe, "root", "netem", "loss", "1%"],
            check=True, capture_output=True, timeout=10,
        )  # fmt: skip
        return True
    except (subprocess.CalledProcessError, OSError):
        return False
    finally:
        subprocess.run(["ip", "link", "del", probe], capture_output=True, timeout=10)


async def test_one_lossy_link_confirms_no_one_down(network: Network, tmp_path: Path) -> None:
    if not _netem_available():
        pytest.skip("tc netem is not available in this kernel")
    async with federation(network, tmp_path) as stub:
        observer = observers_of("member_2", network.addresses)[0]
        # The observer's link loses 30% of packets each way for a fixed run: its own probes
        # may fail and it may suspect, but one observer never confirms anyone down.
        tc = ("netns", "exec", network.namespaces[observer], "tc", "qdisc")
        ip(*tc, "add", "dev", network.ns_ends[observer], "root", "netem", "loss", "30%")
        confirmed: set[str] = set()
        for _ in range(40):
            await asyncio.sleep(0.25)
            confirmed |= {
                s.suspect_id
                for s in (await _suspicions(stub)).values()
                if s.state == registry_pb2.SUSPICION_STATE_CONFIRMED_DOWN
            }
        assert confirmed == set()


async def test_one_cut_link_confirms_nothing_and_an_isolated_member_is_confirmed_down(
    network: Network, tmp_path: Path
) -> None:
    async with federation(network, tmp_path) as stub:
        suspect = "member_2"
        observer = observers_of(suspect, network.addresses)[0]
        for source, target in ((observer, suspect), (suspect, observer)):
            ip(
                "netns", "exec", network.namespaces[source],
                "ip", "route", "add", "blackhole", f"{network.addresses[target]}/32",
            )  # fmt: skip
        await asyncio.sleep(6.0)  # three suspicion timeouts
        assert suspect not in await _suspicions(stub)

        ip("link", "set", network.host_ends[suspect], "down")
        found = None
        for _ in range(120):
            found = (await _suspicions(stub)).get(suspect)
            if found is not None and found.state == registry_pb2.SUSPICION_STATE_CONFIRMED_DOWN:
                break
            await asyncio.sleep(0.25)
        assert found is not None, "the isolated member was never suspected"
        assert found.state == registry_pb2.SUSPICION_STATE_CONFIRMED_DOWN
        assert len(set(found.confirming)) >= 2
        assert suspect not in found.confirming
