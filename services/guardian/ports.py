"""Ports: who listens on one, whether one is free, and the tiers of seed 003.

Seed 003 groups ports in tiers of ten (8100-8109 core, 8110-8119 governance, 8120-8129
execution, 8130-8139 agentic, 8140-8149 services). Guardian generalises this: the tier of
a port is the block of ten that contains it, so rebind_port moves a component only to a
neighbour of the same kind.
"""

from __future__ import annotations

import socket
from pathlib import Path

_LISTEN = "0A"


def tier(port: int) -> range:
    """The tier (block of ten ports) that contains `port`."""
    start = port - port % 10
    return range(max(start, 1), min(start + 10, 65536))


# Seed 003's names of the port tiers (and seed 001's domain ports).
TIER_NAMES: tuple[tuple[range, str], ...] = (
    (range(8000, 8001), "api"),
    (range(8100, 8110), "core"),
    (range(8110, 8120), "governance"),
    (range(8120, 8130), "execution"),
    (range(8130, 8140), "agentic"),
    (range(8140, 8150), "services"),
    (range(8200, 8300), "domains"),
)


def tier_name(port: int) -> str:
    """Seed 003's name of the tier `port` is in, or "" outside the named tiers."""
    return next((name for ports, name in TIER_NAMES if port in ports), "")


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on `host:port` and it can be bound now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # Servers set SO_REUSEADDR, so connections in TIME_WAIT do not make a port busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port_in_tier(host: str, port: int, avoid: set[int]) -> int | None:
    """A free port of `port`'s tier other than `port` and the ports in `avoid`."""
    for candidate in tier(port):
        if candidate != port and candidate not in avoid and port_is_free(host, candidate):
            return candidate
    return None


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def listening_pids(port: int) -> set[int]:
    """Pids of the processes (visible to this user) that hold a listening socket on `port`.

    Reads /proc (Linux). Processes of other users are not visible and are not returned;
    `port_is_free` still tells whether the port is taken.
    """
    inodes = _listening_inodes(port)
    if not inodes:
        return set()
    wanted = {f"socket:[{inode}]" for inode in inodes}
    holders: set[int] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if str(fd.readlink()) in wanted:
                    holders.add(int(proc.name))
                    break
            except OSError:
                continue
    return holders


def port_accepts(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when a TCP connection to `host:port` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False
