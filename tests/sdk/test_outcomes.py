"""Every action's outcome is recorded with no code from the domain, kept in a bounded
ring, and sent to the learning kernel in batches, waiting while it is down."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from grace.kernels.learning.v1 import learning_pb2 as pb
from grace.kernels.learning.v1 import learning_pb2_grpc
from services.common.config import sqlite_url
from services.common.errors import InvalidArgument
from services.common.server import Service
from services.common.storage import Database
from services.sdk import Context, Domain
from services.sdk.dispatcher import Call, Dispatcher
from services.sdk.memory import MemoryClient
from services.sdk.outcomes import OutcomeRecorder, OutcomeRelay
from services.sdk.store import DomainTables, KeyValueStore, ResultStore
from tests.support import UNREACHABLE, server_config, serving

TABLES = DomainTables.of("test_domain")
# Tuesday 2026-03-03 14:30 UTC.
TUESDAY_AFTERNOON = datetime.datetime(2026, 3, 3, 14, 30, tzinfo=datetime.UTC).timestamp()


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(sqlite_url(tmp_path / "domain.db"))
    await db.create_tables(TABLES.metadata)
    yield db
    await db.close()


def flaky_domain() -> Domain:
    domain = Domain("test_domain", capabilities=["ml"])

    @domain.action("work")
    async def work(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
        if data.get("fail"):
            raise RuntimeError("it broke")
        if data.get("bad"):
            raise InvalidArgument("bad", "must not be set")
        return {"ok": True}

    return domain


def dispatcher(database: Database, recorder: OutcomeRecorder) -> Dispatcher:
    return Dispatcher(
        flaky_domain(),
        ResultStore(database, TABLES),
        KeyValueStore(database, TABLES),
        MemoryClient("test_domain", None),
        None,
        4,
        outcomes=recorder,
    )


async def test_every_action_outcome_is_recorded_with_its_context(database: Database) -> None:
    recorder = OutcomeRecorder(database, TABLES, clock=lambda: TUESDAY_AFTERNOON)
    calls = dispatcher(database, recorder)
    await calls.execute(Call("work", {"text": "hello"}))
    with pytest.raises(RuntimeError):
        await calls.execute(Call("work", {"fail": True}, attempt=2))
    with pytest.raises(InvalidArgument):
        await calls.execute(Call("work", {"bad": True}))
    assert await recorder.flush() == 2
    [(_, first), (_, second)] = await recorder.pending(10)
    assert (first.action, first.success, first.attempt, first.sequence) == ("work", True, 1, 1)
    assert first.input_size == len('{"text":"hello"}')
    assert first.in_flight == 1
    assert first.latency_ms >= 0
    assert (second.success, second.attempt, second.sequence) == (False, 2, 2)
    # The caller's mistake is not an outcome of the action.
    assert await recorder.count() == 2


async def test_hour_and_weekday_are_those_of_the_call_in_utc(database: Database) -> None:
    recorder = OutcomeRecorder(database, TABLES)
    recorder.record(
        "work",
        success=True,
        latency_s=0.01,
        input_size=2,
        attempt=1,
        in_flight=1,
        started_at=TUESDAY_AFTERNOON,
    )
    await recorder.flush()
    [(_, kept)] = await recorder.pending(1)
    assert (kept.hour, kept.weekday, kept.latency_ms) == (14, 1, 10.0)


async def test_the_ring_keeps_only_the_newest_outcomes(database: Database) -> None:
    recorder = OutcomeRecorder(database, TABLES, capacity=100)
    for i in range(250):
        recorder.record(f"a{i}", success=True, latency_s=0.0, input_size=0, attempt=1, in_flight=1)
    await recorder.flush()
    kept = await recorder.pending(1000)
    assert len(kept) == 100
    assert kept[0][1].action == "a150"
    assert recorder.dropped == 150


class Kernel(learning_pb2_grpc.LearningServiceServicer, Service):
    """A learning kernel that keeps the batches it was sent."""

    def __init__(self) -> None:
        self.batches: list[pb.IngestOutcomesRequest] = []

    def add_to_server(self, server: grpc.aio.Server) -> list[str]:
        learning_pb2_grpc.add_LearningServiceServicer_to_server(self, server)
        return [pb.DESCRIPTOR.services_by_name["LearningService"].full_name]

    async def IngestOutcomes(
        self, request: pb.IngestOutcomesRequest, context: Any
    ) -> pb.IngestOutcomesResponse:
        self.batches.append(request)
        return pb.IngestOutcomesResponse(accepted=len(request.outcomes))


async def test_outcomes_go_to_the_kernel_in_batches_and_leave_the_ring(
    database: Database, tmp_path: Path
) -> None:
    recorder = OutcomeRecorder(database, TABLES)
    calls = dispatcher(database, recorder)
    for i in range(250):
        await calls.execute(Call("work", {"n": i}))
    kernel = Kernel()
    async with serving(server_config("learning", tmp_path), kernel) as (_, chan):
        relay = OutcomeRelay(recorder, chan, "test_domain", ["ml"], batch_size=100)
        assert await relay.send_once() == 250
    assert [len(b.outcomes) for b in kernel.batches] == [100, 100, 50]
    assert {b.domain_id for b in kernel.batches} == {"test_domain"}
    assert list(kernel.batches[0].capabilities) == ["ml"]
    assert len({b.batch_id for b in kernel.batches}) == 3
    assert [o.sequence for b in kernel.batches for o in b.outcomes] == list(range(1, 251))
    assert await recorder.count() == 0


async def test_outcomes_wait_in_the_ring_while_the_kernel_is_down(
    database: Database, tmp_path: Path
) -> None:
    recorder = OutcomeRecorder(database, TABLES)
    calls = dispatcher(database, recorder)
    for i in range(30):
        await calls.execute(Call("work", {"n": i}))
    async with grpc.aio.insecure_channel(UNREACHABLE) as down:
        relay = OutcomeRelay(recorder, down, "test_domain", ["ml"], timeout_s=2.0)
        with pytest.raises(grpc.aio.AioRpcError):
            await relay.send_once()
    assert await recorder.count() == 30
    kernel = Kernel()
    async with serving(server_config("learning", tmp_path), kernel) as (_, chan):
        relay = OutcomeRelay(recorder, chan, "test_domain", ["ml"])
        assert await relay.send_once() == 30
    assert sum(len(b.outcomes) for b in kernel.batches) == 30


async def test_the_buffer_stays_bounded_while_nothing_is_flushed(database: Database) -> None:
    recorder = OutcomeRecorder(database, TABLES, capacity=100)
    for i in range(130):
        recorder.record(f"a{i}", success=True, latency_s=0.0, input_size=0, attempt=1, in_flight=1)
    assert await recorder.flush() == 100
    assert recorder.dropped == 30
    kept = await recorder.pending(1000)
    assert kept[0][1].action == "a30"
