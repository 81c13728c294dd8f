"""Two registry processes on one PostgreSQL database: a registration made on one is watched
on the other, a heartbeat to either keeps the lease, and after one is killed the other
sweeps the lapsed lease exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import grpc
import pytest

from grace.registry.v1 import registry_pb2 as pb
from grace.registry.v1 import registry_pb2_grpc
from services.common.channels import channel
from services.common.timestamps import to_duration
from tests.support import free_port

LEASE_S = 2.0
SWEEP_S = 0.2


def _start(port: int, data_dir: Path, database_url: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "GRACE_REGISTRY_PORT": str(port),
        "GRACE_DATA_DIR": str(data_dir),
        "GRACE_DATABASE_URL": database_url,
        "GRACE_REGISTRY_SWEEP_INTERVAL_S": str(SWEEP_S),
        "GRACE_EVENTBUS_ADDR": "127.0.0.1:9",
        "GRACE_TRUST_ADDR": "127.0.0.1:9",
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "stderr.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "services.registry"], env=env, stdout=log, stderr=log
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _until(check: object, within: float) -> None:
    deadline = time.monotonic() + within
    while not await check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        await asyncio.sleep(0.05)


async def _ready(stub: registry_pb2_grpc.RegistryServiceStub) -> bool:
    try:
        await stub.GetRegistryStats(pb.GetRegistryStatsRequest(), timeout=1)
    except grpc.aio.AioRpcError:
        return False
    return True


async def _status(stub: registry_pb2_grpc.RegistryServiceStub) -> int:
    found = await stub.GetDomain(pb.GetDomainRequest(domain_id="ai_domain"), timeout=5)
    return found.domain.status


@pytest.mark.slow
@pytest.mark.postgres
async def test_a_watch_on_one_instance_sees_the_other_and_a_lapsed_lease_is_swept_once(
    tmp_path: Path, fresh_postgres_database: str
) -> None:
    ports = [free_port(), free_port()]
    processes = [
        _start(port, tmp_path / f"registry{i}", fresh_postgres_database)
        for i, port in enumerate(ports)
    ]
    watched: list[tuple[int, str, int, int]] = []
    try:
        async with channel(f"127.0.0.1:{ports[0]}") as a, channel(f"127.0.0.1:{ports[1]}") as b:
            stub_a = registry_pb2_grpc.RegistryServiceStub(a)
            stub_b = registry_pb2_grpc.RegistryServiceStub(b)
            await _until(lambda: _ready(stub_a), 60)
            await _until(lambda: _ready(stub_b), 60)

            async def watch_b() -> None:
                stream = stub_b.WatchDomains(pb.WatchDomainsRequest())
                async for response in stream:
                    watched.extend(
                        (c.kind, c.domain.domain_id, c.domain.status, c.revision)
                        for c in response.changes
                    )

            watching = asyncio.create_task(watch_b())
            await stub_a.RegisterDomain(
                pb.RegisterDomainRequest(
                    domain_id="ai_domain",
                    host="127.0.0.1",
                    port=9300,
                    capabilities=["ml"],
                    lease_ttl=to_duration(LEASE_S),
                )
            )

            async def registered() -> bool:
                return (pb.CHANGE_KIND_REGISTERED, "ai_domain", pb.DOMAIN_STATUS_HEALTHY, 1) in (
                    watched
                )

            await _until(registered, 10)

            # Heartbeats to B alone keep the lease A gave, on both, for three lease times.
            started = time.monotonic()
            while time.monotonic() - started < 3 * LEASE_S:
                await stub_b.Heartbeat(pb.HeartbeatRequest(domain_id="ai_domain"), timeout=5)
                await asyncio.sleep(LEASE_S / 4)
            assert await _status(stub_a) == pb.DOMAIN_STATUS_HEALTHY
            assert await _status(stub_b) == pb.DOMAIN_STATUS_HEALTHY

            processes[0].send_signal(signal.SIGKILL)
            processes[0].wait(timeout=30)
            await stub_b.Heartbeat(pb.HeartbeatRequest(domain_id="ai_domain"), timeout=5)
            last_heartbeat = time.monotonic()

            async def lapsed() -> bool:
                return await _status(stub_b) == pb.DOMAIN_STATUS_UNHEALTHY

            await _until(lapsed, 10 * LEASE_S)
            swept_after_s = time.monotonic() - last_heartbeat
            await asyncio.sleep(5 * SWEEP_S)  # Room for a second, wrong, expiry.
            watching.cancel()
    finally:
        for process in processes:
            _stop(process)
    status_changes = [w for w in watched if w[0] == pb.CHANGE_KIND_STATUS_CHANGED]
    assert status_changes == [
        (pb.CHANGE_KIND_STATUS_CHANGED, "ai_domain", pb.DOMAIN_STATUS_UNHEALTHY, 2)
    ]
    conn = await asyncpg.connect(fresh_postgres_database.replace("+asyncpg", ""), timeout=5)
    try:
        logged = await conn.fetch("SELECT revision, kind FROM registry_changes ORDER BY revision")
        events = await conn.fetch("SELECT event_type FROM registry_outbox ORDER BY row_id")
    finally:
        await conn.close()
    assert [(r["revision"], r["kind"]) for r in logged] == [
        (1, "REGISTERED"),
        (2, "STATUS_CHANGED"),
    ]
    assert [e["event_type"] for e in events] == ["domain.registered", "domain.status_changed"]
    # The lease ran LEASE_S from the last heartbeat; the sweep follows within an interval.
    assert swept_after_s >= LEASE_S
    print(
        f"lease {LEASE_S}s, sweep every {SWEEP_S}s: marked UNHEALTHY {swept_after_s:.2f}s "
        "after the last heartbeat, by the surviving instance, once"
    )
