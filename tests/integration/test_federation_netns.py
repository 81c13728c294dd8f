"""The health federation across hosts: members in separate network namespaces joined by
veth pairs to one bridge, the registry on the bridge.

One lossy link must not confirm anyone down (the loss is made with iptables' `statistic`
match inside the observer's namespace, or `tc netem` where iptables is missing); cutting the
link between the suspect and one of its observers must not even raise a suspicion (the
observer's indirect probes through other members still reach the suspect); isolating the
suspect from everyone must confirm it down, by at least two distinct observers.
Needs root and `ip netns`; skipped where namespaces cannot be made (and the lossy-link test
where neither iptables nor netem can drop packets). The addresses are on a private bridge
that exists only for the test.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
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
LOSS = 0.3
LOSSY_RUN_S = 20.0
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


@dataclass(frozen=True)
class Federation:
    """The registry (in this process) and the member processes, one per namespace."""

    stub: registry_pb2_grpc.RegistryServiceAsyncStub
    registry: RegistryServer
    processes: dict[str, asyncio.subprocess.Process]


@asynccontextmanager
async def federation(network: Network, tmp_path: Path) -> AsyncIterator[Federation]:
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
        processes = {
            member: await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", ns, sys.executable, "-m",
                "tests.integration.federation_member",
                member, network.addresses[member], server.address,
                cwd=PROJECT_ROOT, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )
            for member, ns in network.namespaces.items()
        }  # fmt: skip
        try:
            for process in processes.values():
                assert process.stdout is not None
                line = await asyncio.wait_for(process.stdout.readline(), 60)
                assert b"member ready" in line, line
            await asyncio.sleep(3.0)
            assert await _suspicions(stub) == {}
            yield Federation(stub, registry, processes)
        finally:
            for process in processes.values():
                if process.returncode is None:
                    process.terminate()
            for process in processes.values():
                try:
                    await asyncio.wait_for(process.wait(), 10)
                except TimeoutError:
                    process.kill()
                    await process.wait()


def _iptables_loss(binary: str, ns: str, device: str, probability: float) -> list[list[str]]:
    """`ip` arguments adding the rules that drop `probability` of the packets each way on
    `device`, with iptables' `statistic` match (in kernels without `sch_netem` too)."""
    drop = ["-m", "statistic", "--mode", "random", "--probability", f"{probability}"]
    return [
        ["netns", "exec", ns, binary, "-A", "INPUT", "-i", device, *drop, "-j", "DROP"],
        ["netns", "exec", ns, binary, "-A", "OUTPUT", "-o", device, *drop, "-j", "DROP"],
    ]


def _make_lossy(network: Network, member: str, probability: float) -> str:
    """Makes `member`'s link lose `probability` of its packets each way; returns the
    iptables binary that does it ("tc" for netem), or skips the test when this host can do
    neither."""
    ns, device = network.namespaces[member], network.ns_ends[member]
    for binary in ("iptables", "iptables-legacy"):
        if shutil.which(binary) is None:
            continue
        try:
            for rule in _iptables_loss(binary, ns, device, probability):
                ip(*rule)
        except (subprocess.CalledProcessError, OSError):
            subprocess.run(["ip", "netns", "exec", ns, binary, "-F"], capture_output=True)
            continue
        return binary
    loss = f"{probability * 100:g}%"
    try:
        ip("netns", "exec", ns, "tc", "qdisc", "add", "dev", device, "root", "netem", "loss", loss)
    except (subprocess.CalledProcessError, OSError):
        pytest.skip("neither iptables' statistic match nor tc netem can drop packets here")
    return "tc"


def _dropped(network: Network, member: str, how: str) -> int:
    """Packets the lossy link dropped so far (its DROP rules' counters, or netem's)."""
    ns, device = network.namespaces[member], network.ns_ends[member]
    if how == "tc":
        shown = ["ip", "netns", "exec", ns, "tc", "-s", "qdisc", "show", "dev", device]
        # "Sent 9144 bytes 98 pkt (dropped 31, overlimits 0 requeues 0)"
        words = subprocess.run(shown, capture_output=True, text=True, timeout=10).stdout.split()
        pairs = itertools.pairwise(words)
        return sum(int(n.rstrip(",")) for word, n in pairs if word.lstrip("(") == "dropped")
    listed = ["ip", "netns", "exec", ns, how, "-S", "-v"]
    rules = subprocess.run(listed, capture_output=True, text=True, timeout=10).stdout
    return sum(
        int(words[words.index("-c") + 1])
        for words in (line.split() for line in rules.splitlines())
        if "statistic" in words and "-c" in words
    )


async def _registry_events(registry: RegistryServer) -> list[str]:
    """Types of the federation events the registry wrote (its bus is unreachable in these
    tests, so they all stay in its outbox)."""
    return [e.event_type for e in await registry.federation.outbox.pending(100_000)]


async def test_one_lossy_link_confirms_no_one_down(network: Network, tmp_path: Path) -> None:
    async with federation(network, tmp_path) as running:
        observer = observers_of("member_2", network.addresses)[0]
        # The observer's link loses packets each way for a fixed run: its own probes may
        # fail and it may suspect, but one observer never confirms anyone down.
        how = _make_lossy(network, observer, LOSS)
        confirmed: set[str] = set()
        for _ in range(int(LOSSY_RUN_S / 0.25)):
            await asyncio.sleep(0.25)
            confirmed |= {
                s.suspect_id
                for s in (await _suspicions(running.stub)).values()
                if s.state == registry_pb2.SUSPICION_STATE_CONFIRMED_DOWN
            }
        events = await _registry_events(running.registry)
        dropped = _dropped(network, observer, how)
        exited = [m for m, p in running.processes.items() if p.returncode is not None]
        # Guardian restarts a member only on `domain.down_confirmed`: each one is a restart.
        restarts = events.count("domain.down_confirmed")
        print(
            f"\nlossy link ({'tc netem' if how == 'tc' else how + ' -m statistic'}, "
            f"{LOSS:.0%} each way on {observer}'s veth, {LOSSY_RUN_S:g} s, {MEMBERS} members, "
            f"{dropped} packets dropped): suspicions raised "
            f"{events.count('domain.suspected')}, confirmed {len(confirmed)}, "
            f"restarts {restarts}, members running {MEMBERS - len(exited)}/{MEMBERS}"
        )
        assert dropped > 0  # the link was lossy
        assert confirmed == set()
        assert restarts == 0
        assert exited == []


async def test_one_cut_link_confirms_nothing_and_an_isolated_member_is_confirmed_down(
    network: Network, tmp_path: Path
) -> None:
    async with federation(network, tmp_path) as running:
        stub = running.stub
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
