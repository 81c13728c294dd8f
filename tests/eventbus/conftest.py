"""Event bus fixtures: a core on each database backend, and a real server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from grace.eventbus.v1 import eventbus_pb2_grpc
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
from tests.support import ManualClock, server_config, serving

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


async def eventually(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool], within_s: float = 20.0
) -> None:
    """Polls until `condition` holds; fails after a generous timeout."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
