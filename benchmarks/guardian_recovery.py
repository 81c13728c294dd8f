"""How fast Guardian boots, notices a crash and brings a component back.

Runs the real registry on loopback (free ports, a temporary data dir):

- baseline: spawn `python -m services.registry` by hand and poll its health until SERVING;
- Guardian boot of the same component (spawn, Watch/Check, register) until SERVING;
- kill -9 of the component: time until Guardian notices, and until it is SERVING again
  (initial backoff 0.1 s here; the default is 1 s and adds that second).

Prints a table with the ratio of each against the baseline, then one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from grpc_health.v1 import health_pb2

from services.common.channels import channel
from services.common.config import sqlite_url
from services.common.storage import Database
from services.guardian.journal import Journal
from services.guardian.model import State
from services.guardian.probe import HealthClient
from services.guardian.store import GuardianStore
from services.guardian.supervisor import Supervisor
from services.guardian.topology import build_topology

ROUNDS = 5
SERVICE = "grace.registry.v1.RegistryService"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def bare_start(data_dir: Path) -> float:
    """Spawn the registry directly and poll Check every 10 ms until SERVING."""
    port = free_port()
    env = {**os.environ, "GRACE_REGISTRY_PORT": str(port), "GRACE_DATA_DIR": str(data_dir)}
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.registry",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with channel(f"127.0.0.1:{port}") as chan:
            client = HealthClient(chan)
            while True:
                try:
                    reply = await client.check(
                        health_pb2.HealthCheckRequest(service=SERVICE), timeout=1
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return time.perf_counter() - started
                except Exception:  # not listening yet
                    pass
                await asyncio.sleep(0.01)
    finally:
        proc.terminate()
        await proc.wait()


async def wait_for(predicate: Callable[[], bool], limit: float = 60.0) -> float:
    started = time.perf_counter()
    while not predicate():
        if time.perf_counter() - started > limit:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.002)
    return time.perf_counter() - started


async def main() -> None:
    logging.basicConfig(level=logging.ERROR)  # the decisions are expected; keep output clean
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        baseline = [await bare_start(data_dir / f"bare{i}") for i in range(ROUNDS)]

        topo = build_topology(
            {
                "restart": {"initial_backoff_s": 0.1, "budget": 100},
                "registration": {"enabled": False},
                "components": {
                    "registry": {
                        "module": "services.registry",
                        "port": free_port(),
                        "health_service": SERVICE,
                    }
                },
            }
        )
        store = GuardianStore(Database(sqlite_url(data_dir / "guardian.db")))
        await store.open()
        boots: list[float] = []
        notices: list[float] = []
        recoveries: list[float] = []
        for _ in range(ROUNDS):
            supervisor = Supervisor(
                topo,
                data_dir=data_dir / "guardian",
                host="127.0.0.1",
                base_env=os.environ,
                guardian_address="127.0.0.1:0",
                journal=Journal(store),
            )
            started = time.perf_counter()
            await supervisor.boot()
            boots.append(time.perf_counter() - started)
            pid = supervisor.status("registry").pid
            killed = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            await wait_for(lambda s=supervisor: s.status("registry").state != State.SERVING)
            notices.append(time.perf_counter() - killed)
            await wait_for(lambda s=supervisor: s.status("registry").state == State.SERVING)
            recoveries.append(time.perf_counter() - killed)
            await supervisor.shutdown()
        await store.close()

    base = statistics.median(baseline)
    rows = [
        ("bare start until SERVING (baseline)", base),
        ("Guardian boot until SERVING", statistics.median(boots)),
        ("kill -9 noticed", statistics.median(notices)),
        ("kill -9 to SERVING again (backoff 0.1 s)", statistics.median(recoveries)),
    ]
    print(f"Guardian recovery, registry component, median of {ROUNDS} (shared 2-core machine)")
    print(f"{'measure':<44}{'ms':>10}{'x baseline':>12}")
    for label, value in rows:
        print(f"{label:<44}{value * 1000:>10.1f}{value / base:>12.2f}")
    print(
        json.dumps(
            {
                "rounds": ROUNDS,
                "bare_start_ms": round(base * 1000, 1),
                "guardian_boot_ms": round(statistics.median(boots) * 1000, 1),
                "kill_noticed_ms": round(statistics.median(notices) * 1000, 2),
                "kill_to_serving_ms": round(statistics.median(recoveries) * 1000, 1),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
