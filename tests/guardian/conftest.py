"""Guardian test helpers: topologies of tiny test components, and a supervisor to run them."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any

from services.common.config import sqlite_url
from services.common.storage import Database
from services.guardian.journal import Journal
from services.guardian.model import State
from services.guardian.registration import Registrar
from services.guardian.store import GuardianStore
from services.guardian.supervisor import Supervisor
from services.guardian.topology import Topology, build_topology

TEST_COMPONENT = "tests.guardian.component"

# Short intervals so the multi-process tests run quickly; generous start-up timeouts
# because the machine is shared.
FAST_SETTINGS: dict[str, dict[str, Any]] = {
    "probe": {"interval_s": 0.3, "timeout_s": 1.0, "failure_threshold": 2, "startup_poll_s": 0.05},
    "restart": {"initial_backoff_s": 0.2, "max_backoff_s": 0.8, "budget": 3},
    "boot": {"startup_timeout_s": 15.0, "stop_timeout_s": 5.0},
    "registration": {"enabled": False},
}


def component(name: str, port: int, *args: str, **table: Any) -> dict[str, Any]:
    """A topology table running the test component with `args`."""
    return {"module": TEST_COMPONENT, "port": port, "args": ["--name", name, *args], **table}


def topology(components: dict[str, dict[str, Any]], **overrides: dict[str, Any]) -> Topology:
    """A validated topology of `components` with fast settings (sections overridable)."""
    data: dict[str, Any] = {key: dict(value) for key, value in FAST_SETTINGS.items()}
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value}
    data["components"] = components
    return build_topology(data, source="test topology")


@asynccontextmanager
async def supervising(
    topo: Topology,
    data_dir: Path,
    registrar: Registrar | None = None,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[tuple[Supervisor, GuardianStore]]:
    """A supervisor (not booted) with a store under `data_dir`; everything stops on exit."""
    store = GuardianStore(Database(sqlite_url(data_dir / "guardian.db")))
    await store.open()
    journal = Journal(store)
    supervisor = Supervisor(
        topo,
        data_dir=data_dir,
        host="127.0.0.1",
        base_env=os.environ,
        guardian_address="127.0.0.1:8104",
        journal=journal,
        registrar=registrar,
        clock=clock,
    )
    try:
        yield supervisor, store
    finally:
        await supervisor.shutdown()
        await journal.flush()
        await store.close()


def state_of(supervisor: Supervisor, name: str) -> State:
    """The current state of a component."""
    return supervisor.status(name).state


def pid_exists(pid: int) -> bool:
    """True when a (non-zombie) process with this pid exists."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def port_open(port: int) -> bool:
    """True when something accepts connections on 127.0.0.1:port."""
    with closing(socket.socket()) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
