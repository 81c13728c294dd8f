"""Helpers for tests: a clock tests can move, and in-process servers on free ports."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc

from services.common.channels import channel
from services.common.config import ServerConfig
from services.common.server import GraceServer, Service


class ManualClock:
    """A clock that only moves when told to. Starts at a fixed epoch time."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


STOP_TIMEOUT_S = 30.0

# Peers a test did not start are given an address nothing listens on (port 9 is
# "discard"), so a test server never talks to a real Grace running on the default ports.
UNREACHABLE = "127.0.0.1:9"
ISOLATED_PEERS = {
    f"GRACE_{peer.upper()}_ADDR": UNREACHABLE
    for peer in (
        "eventbus",
        "registry",
        "memory",
        "orchestrator",
        "guardian",
        "immutable_log",
        "trust",
        "governance",
        "immune",
        "scheduler",
        "librarian",
        "tasks",
        "triggers",
    )
}


def server_config(
    service: str, data_dir: Path, database_url: str = "", peers: dict[str, str] | None = None
) -> ServerConfig:
    """A config binding 127.0.0.1 on a free port, with its data under `data_dir`.

    Args:
        peers: Addresses of peers the test runs, as GRACE_<PEER>_ADDR variables; every
            other peer is unreachable.
    """
    return ServerConfig(
        service=service,
        host="127.0.0.1",
        port=0,
        data_dir=data_dir,
        database_url=database_url or f"sqlite+aiosqlite:///{data_dir / (service + '.db')}",
        shutdown_grace_s=0.5,
        env={**ISOLATED_PEERS, **(peers or {})},
    )


@asynccontextmanager
async def serving(
    config: ServerConfig, service: Service
) -> AsyncIterator[tuple[GraceServer, grpc.aio.Channel]]:
    """Runs `service` on a real server and yields it with a channel to it.

    A service that does not stop within STOP_TIMEOUT_S fails the test, with the stacks of
    every pending task on stderr, instead of hanging the suite.
    """
    server = GraceServer(config, service)
    await server.start()
    try:
        async with channel(server.address) as chan:
            yield server, chan
    finally:
        try:
            await asyncio.wait_for(server.stop(grace=0.5), STOP_TIMEOUT_S)
        except TimeoutError:
            for task in asyncio.all_tasks():
                task.print_stack(file=sys.stderr)
            raise AssertionError(
                f"{config.service} did not stop within {STOP_TIMEOUT_S}s"
            ) from None


def free_ports(count: int) -> list[int]:
    """Loopback ports that were free a moment ago (bound together, so all distinct)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port() -> int:
    """One loopback port that was free a moment ago."""
    return free_ports(1)[0]
