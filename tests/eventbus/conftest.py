"""Event bus fixtures: a core on each database backend, and a real server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grace.eventbus.v1 import eventbus_pb2_grpc
from services.common.channels import channel
from services.common.storage import Database
from services.eventbus.bus import EventBus
from services.eventbus.config import EventBusConfig
from services.eventbus.eventlog import Clock
from services.eventbus.jetstream import JetStreamLog, JetStreamOptions
from services.eventbus.jetstream_push import jetstream_push
from services.eventbus.model import BusSettings
from services.eventbus.server import EventBusServer
from services.eventbus.store import EventStore
from tests.conftest import DatabaseTarget
from tests.support import ManualClock, free_port, server_config, serving

# Nothing listens here: tests that do not push never reach the registry.
NO_REGISTRY = "127.0.0.1:9"

FAST = BusSettings(
    retention_interval_s=3600,
    push_initial_backoff_s=0.02,
    push_max_backoff_s=0.2,
    push_timeout_s=5,
    flush_interval_s=0.05,
)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


NATS_URL = os.environ.get("GRACE_TEST_NATS_URL", "nats://127.0.0.1:4222")


def nats_answers(url: str) -> bool:
    """True when something accepts connections at the NATS URL's host and port."""
    host, _, port = url.split("://", 1)[-1].rsplit("@", 1)[-1].partition(":")
    try:
        with socket.create_connection((host, int(port or 4222)), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def jetstream_options() -> JetStreamOptions:
    """A stream of its own on the test NATS server; skips when none answers."""
    if not nats_answers(NATS_URL):
        pytest.skip(f"no NATS server answers at {NATS_URL}")
    tag = uuid.uuid4().hex[:12]
    return JetStreamOptions(
        servers=(NATS_URL,), stream=f"GRACE_TEST_{tag}", subject_prefix=f"test{tag}"
    )


def jetstream_bus(
    options: JetStreamOptions,
    settings: BusSettings,
    clock: Clock = time.time,
    registry_address: str = NO_REGISTRY,
) -> EventBus:
    """A bus core with everything in JetStream (no database of its own)."""
    event_log = JetStreamLog(options, settings, clock)
    state, push = jetstream_push(event_log, settings, registry_address, clock)
    return EventBus(state, settings, registry_address, clock, event_log=event_log, push=push)


async def delete_stream(options: JetStreamOptions) -> None:
    """Removes a test stream, its dead letters and its bucket from the server."""
    import nats

    nc = await nats.connect(list(options.servers))
    try:
        js = nc.jetstream()
        for stream in (options.stream, f"{options.stream}_DEAD", f"KV_{options.stream}_BUS"):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(stream)
    finally:
        await nc.close()


@pytest.fixture(params=["sql", "jetstream"])
async def bus(
    request: pytest.FixtureRequest, database: DatabaseTarget, clock: ManualClock
) -> AsyncIterator[EventBus]:
    """A bus core on each backend (the built-in one on each database, everything in
    JetStream), on a manual clock."""
    settings = replace(FAST)  # its own: tests change settings in place
    options: JetStreamOptions | None = None
    if request.param == "jetstream":
        if database.schema is not None:
            pytest.skip("the JetStream backend uses no database")
        options = request.getfixturevalue("jetstream_options")
        core = jetstream_bus(options, settings, clock)
    else:
        core = EventBus(
            EventStore(Database(database.url, schema=database.schema)), settings, NO_REGISTRY, clock
        )
    await core.open()
    yield core
    await core.close()
    if options is not None:
        await delete_stream(options)


def bus_config(
    data_dir: Path,
    registry_address: str = NO_REGISTRY,
    *,
    jetstream: JetStreamOptions | None = None,
    **overrides: object,
) -> EventBusConfig:
    return EventBusConfig(
        server=server_config("eventbus", data_dir),
        settings=replace(FAST, **overrides),  # type: ignore[arg-type]
        registry_address=registry_address,
        jetstream=jetstream,
    )


@pytest.fixture(params=["sql", "jetstream"])
async def log_backend(request: pytest.FixtureRequest) -> AsyncIterator[JetStreamOptions | None]:
    """Where a test server keeps its events: None for the built-in log, or a JetStream
    stream of the test's own (deleted afterwards)."""
    if request.param == "sql":
        yield None
        return
    options: JetStreamOptions = request.getfixturevalue("jetstream_options")
    yield options
    await delete_stream(options)


@pytest.fixture
async def bus_server(
    tmp_path: Path, log_backend: JetStreamOptions | None
) -> AsyncIterator[tuple[EventBusServer, grpc.aio.Channel]]:
    """The bus on a real gRPC server, on each backend."""
    service = EventBusServer(bus_config(tmp_path, jetstream=log_backend))
    async with serving(service.config.server, service) as (_, chan):
        yield service, chan


@pytest.fixture
def stub(
    bus_server: tuple[EventBusServer, grpc.aio.Channel],
) -> eventbus_pb2_grpc.EventBusServiceStub:
    return eventbus_pb2_grpc.EventBusServiceStub(bus_server[1])


def nats_server() -> str | None:
    """The nats-server executable (often in /usr/sbin, outside a user's PATH), or None."""
    return shutil.which("nats-server") or shutil.which(
        "nats-server", path="/usr/sbin:/usr/local/sbin"
    )


@pytest.fixture
def private_nats(tmp_path: Path) -> tuple[int, Path]:
    """A port and a store directory for a NATS server of the test's own."""
    if nats_server() is None:
        pytest.skip("nats-server is not installed")
    return free_port(), tmp_path / "jetstream"


def start_nats(port: int, store: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            nats_server() or "nats-server",
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "-js",
            "-sd",
            str(store),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def wait_for_nats(port: int) -> None:
    for _ in range(100):
        if nats_answers(f"nats://127.0.0.1:{port}"):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("nats-server did not start")


@contextlib.asynccontextmanager
async def bus_process(
    data_dir: Path, port: int, jetstream: JetStreamOptions | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    env = {**os.environ, "GRACE_REGISTRY_ADDR": "127.0.0.1:9", "GRACE_EVENTBUS_HOST": "127.0.0.1"}
    if jetstream is not None:
        env["GRACE_EVENTBUS_BACKEND"] = ",".join(jetstream.servers)
        env["GRACE_EVENTBUS_NATS_STREAM"] = jetstream.stream
        env["GRACE_EVENTBUS_NATS_SUBJECT_PREFIX"] = jetstream.subject_prefix
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.eventbus",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with channel(f"127.0.0.1:{port}") as chan:
            health = health_pb2_grpc.HealthStub(chan)
            for _ in range(300):
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the bus did not become SERVING")
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
