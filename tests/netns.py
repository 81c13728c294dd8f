"""Hosts for tests on one machine: network namespaces joined by veth pairs to a bridge.

`private_network(members, subnet, tag)` makes one namespace per member, each with one end
of a veth pair (address `<subnet>.<10 + index>`), the other end on a bridge in the root
namespace (address `<subnet>.1`, so the test process reaches every member), and removes
them all afterwards. Needs root and iproute2; where namespaces cannot be made the test is
skipped. The addresses exist only on the private bridge.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest


def ip(*args: str) -> None:
    """Runs `ip ARGS`; raises CalledProcessError when it fails."""
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@dataclass(frozen=True)
class Network:
    """The namespaces, their addresses, and both ends of each member's veth pair."""

    bridge_address: str
    namespaces: dict[str, str]
    addresses: dict[str, str]
    host_ends: dict[str, str]
    ns_ends: dict[str, str]

    def exec_argv(self, member: str, *argv: str) -> list[str]:
        """The command line that runs `argv` inside `member`'s namespace."""
        return ["ip", "netns", "exec", self.namespaces[member], *argv]

    def pids(self, member: str) -> list[int]:
        """Every process that runs in `member`'s namespace now."""
        listed = subprocess.run(
            ["ip", "netns", "pids", self.namespaces[member]],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return [int(word) for word in listed.stdout.split()]

    def kill_all(self, member: str) -> list[int]:
        """SIGKILLs every process of `member`'s namespace at once, as a host that loses
        power; returns their pids."""
        pids = self.pids(member)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids


def _teardown(tag: str, count: int) -> None:
    for index in range(count):
        subprocess.run(["ip", "netns", "del", f"{tag}n{index}"], capture_output=True)
        subprocess.run(["ip", "link", "del", f"{tag}h{index}"], capture_output=True)
    subprocess.run(["ip", "link", "del", f"{tag}br"], capture_output=True)


@contextlib.contextmanager
def private_network(members: Sequence[str], subnet: str, tag: str) -> Iterator[Network]:
    """One namespace per member on a bridge of its own; skips the test where namespaces
    cannot be made.

    Args:
        members: Names of the members, in address order.
        subnet: The first three octets of a /24 nothing else on the machine uses.
        tag: A short prefix (at most 6 characters) for the namespaces and links, unique
            to the test process.
    """
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    namespaces, addresses, host_ends, ns_ends = {}, {}, {}, {}
    try:
        ip("link", "add", f"{tag}br", "type", "bridge")
        ip("addr", "add", f"{subnet}.1/24", "dev", f"{tag}br")
        ip("link", "set", f"{tag}br", "up")
        for index, member in enumerate(members):
            ns, host_end, ns_end = f"{tag}n{index}", f"{tag}h{index}", f"{tag}m{index}"
            address = f"{subnet}.{index + 10}"
            ip("netns", "add", ns)
            ip("link", "add", host_end, "type", "veth", "peer", "name", ns_end)
            ip("link", "set", ns_end, "netns", ns)
            ip("link", "set", host_end, "master", f"{tag}br")
            ip("link", "set", host_end, "up")
            ip("netns", "exec", ns, "ip", "addr", "add", f"{address}/24", "dev", ns_end)
            ip("netns", "exec", ns, "ip", "link", "set", ns_end, "up")
            ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
            namespaces[member], addresses[member] = ns, address
            host_ends[member], ns_ends[member] = host_end, ns_end
    except (subprocess.CalledProcessError, OSError) as exc:
        _teardown(tag, len(members))
        pytest.skip(f"cannot make network namespaces here: {exc}")
    network = Network(f"{subnet}.1", namespaces, addresses, host_ends, ns_ends)
    try:
        yield network
    finally:
        # Whatever still runs in a namespace would keep it (and its addresses) alive.
        for member in members:
            network.kill_all(member)
        _teardown(tag, len(members))
