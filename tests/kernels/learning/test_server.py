"""The learning kernel over gRPC with a real shared memory: outcome batches in, patterns
out as contributions with their evidence and `insight.*` events."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from grace.kernels.learning.v1 import learning_pb2 as pb
from grace.kernels.learning.v1 import learning_pb2_grpc
from grace.memory.v1 import memory_pb2, memory_pb2_grpc
from services.common.outbox import OutboxEvent
from services.kernels.learning.config import LearningConfig
from services.kernels.learning.learning import LearningSettings
from services.kernels.learning.server import LearningServer
from services.kernels.learning.servicer import outcomes_from_request
from services.memory.config import MemoryConfig
from services.memory.memory import MemorySettings
from services.memory.server import MemoryServer
from tests.support import give_up_midway, pause_after, server_config, serving


class Recorder:
    """Keeps what would go to the bus."""

    def __init__(self) -> None:
        self.events: list[OutboxEvent] = []

    async def publish(self, events: Sequence[OutboxEvent]) -> None:
        self.events.extend(events)

    def insights(self) -> list[OutboxEvent]:
        """The insight events, once each (the relay delivers at least once; the bus
        suppresses a repeated event id)."""
        unique = {e.event_id: e for e in self.events if e.event_type.startswith("insight.")}
        return list(unique.values())


class Discard:
    async def publish(self, events: object) -> None:
        """Accepts and forgets: the memory's own events are not under test."""


@dataclass
class System:
    learning: learning_pb2_grpc.LearningServiceStub
    memory: memory_pb2_grpc.SharedMemoryServiceStub
    bus: Recorder
    log: Recorder
    server: LearningServer


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[System]:
    memory = MemoryServer(
        MemoryConfig(server=server_config("memory", tmp_path), settings=MemorySettings()),
        publisher=Discard(),
    )
    bus = Recorder()
    log = Recorder()
    async with contextlib.AsyncExitStack() as stack:
        mem_server, mem_chan = await stack.enter_async_context(
            serving(server_config("memory", tmp_path), memory)
        )
        config = LearningConfig(
            server=server_config("learning", tmp_path),
            learning=LearningSettings(analyze_interval_s=3600),
            memory_address=mem_server.address,
            relay_interval_s=0.05,
        )
        server = LearningServer(config, bus=bus, immutable_log=log)
        _, chan = await stack.enter_async_context(serving(config.server, server))
        yield System(
            learning_pb2_grpc.LearningServiceStub(chan),
            memory_pb2_grpc.SharedMemoryServiceStub(mem_chan),
            bus,
            log,
            server,
        )


async def insights_sent(bus: Recorder, within_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not bus.insights():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("no insight event was relayed")
        await asyncio.sleep(0.05)


async def logged(log: Recorder, within_s: float = 20.0) -> OutboxEvent:
    deadline = asyncio.get_running_loop().time() + within_s
    while not log.events:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("nothing was appended to the immutable log")
        await asyncio.sleep(0.05)
    return log.events[0]


def batch(batch_id: str, spike_hour: int = 14, calls: int = 50) -> pb.IngestOutcomesRequest:
    outcomes = [
        pb.ActionOutcome(
            action="generate",
            success=not (hour == spike_hour and i % 2 == 0),
            latency_ms=20.0,
            input_size=300,
            hour=hour,
            weekday=2,
            attempt=1,
            in_flight=1,
            sequence=hour * calls + i + 1,
        )
        for hour in range(24)
        for i in range(calls)
    ]
    return pb.IngestOutcomesRequest(
        domain_id="ai_domain", batch_id=batch_id, outcomes=outcomes, capabilities=["ai"]
    )


async def test_a_failure_spike_becomes_a_contribution_with_evidence_and_an_insight_event(
    system: System,
) -> None:
    taken = await system.learning.IngestOutcomes(batch("b-1"))
    assert (taken.accepted, taken.duplicate) == (1200, False)
    analyzed = await system.learning.Analyze(pb.AnalyzeRequest())
    [pattern] = analyzed.new_patterns
    assert (pattern.kind, pattern.factor, pattern.bucket) == (
        "failure",
        "hour_of_day",
        "14:00-14:59 UTC",
    )
    assert pattern.contribution_type == "failed_patterns"
    assert pattern.evidence["in_bucket"]["failures"] == 25
    assert pattern.contribution_id
    stored = await system.memory.GetContribution(
        memory_pb2.GetContributionRequest(contribution_id=pattern.contribution_id)
    )
    assert stored.contribution.domain_id == "learning"
    assert stored.contribution.content["evidence"]["test"] == "two-proportion z-test"
    await system.server.relay.drain_once()
    [event] = system.bus.insights()
    assert event.event_type == "insight.failure"
    assert event.data["capabilities"] == ["ai"]
    assert event.data["action"] == "generate"
    assert event.data["contribution_id"] == pattern.contribution_id
    # What was learned is on record in the immutable log.
    entry = await logged(system.log)
    assert (entry.event_type, entry.data["pattern_id"]) == (
        "learning.pattern_found",
        pattern.pattern_id,
    )
    assert entry.data["test"] == "two-proportion z-test"


async def test_a_batch_sent_again_is_counted_once(system: System) -> None:
    await system.learning.IngestOutcomes(batch("b-1"))
    again = await system.learning.IngestOutcomes(batch("b-1"))
    assert (again.accepted, again.duplicate) == (0, True)
    stats = await system.learning.GetLearningStats(pb.GetLearningStatsRequest())
    assert (stats.outcomes, stats.batches, stats.duplicate_batches) == (1200, 1, 1)


async def test_a_batch_whose_sender_gives_up_midway_is_still_counted_once(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A client's deadline cancels the RPC's handler, here just after the batch id is stored:
    # the retry is then a duplicate, so the outcomes must be counted all the same.
    learning = system.server.learning
    taken = pause_after(monkeypatch, learning.store, "take_batch")
    request = batch("b-1")
    sending = learning.ingest("ai_domain", "b-1", outcomes_from_request(request), ["ai"])
    await give_up_midway(sending, taken)
    again = await system.learning.IngestOutcomes(request)
    assert (again.accepted, again.duplicate) == (0, True)
    stats = await system.learning.GetLearningStats(pb.GetLearningStatsRequest())
    assert (stats.outcomes, stats.batches, stats.duplicate_batches) == (1200, 1, 1)


async def test_a_pattern_found_twice_is_announced_once_and_can_be_read(system: System) -> None:
    await system.learning.IngestOutcomes(batch("b-1"))
    first = await system.learning.Analyze(pb.AnalyzeRequest())
    await system.learning.IngestOutcomes(batch("b-2"))
    second = await system.learning.Analyze(pb.AnalyzeRequest())
    assert (len(first.new_patterns), len(second.new_patterns), second.found) == (1, 0, 1)
    listed = await system.learning.ListPatterns(pb.ListPatternsRequest(domain_id="ai_domain"))
    assert [p.pattern_id for p in listed.patterns] == [first.new_patterns[0].pattern_id]
    got = await system.learning.GetPattern(
        pb.GetPatternRequest(pattern_id=first.new_patterns[0].pattern_id)
    )
    assert got.pattern.evidence["in_bucket"]["calls"] == 100


async def test_bad_outcomes_are_refused_naming_the_field(system: System) -> None:
    request = batch("b-1")
    request.outcomes[3].hour = 24
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await system.learning.IngestOutcomes(request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "outcomes[3].hour" in (refused.value.details() or "")
    stats = await system.learning.GetLearningStats(pb.GetLearningStatsRequest())
    assert stats.outcomes == 0


async def test_an_unknown_pattern_is_not_found(system: System) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await system.learning.GetPattern(pb.GetPatternRequest(pattern_id="pat-nope"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_patterns_wait_for_a_memory_that_is_down_and_go_when_it_is_back(
    tmp_path: Path,
) -> None:
    class Flaky:
        def __init__(self) -> None:
            self.up = False
            self.contributed: list[str] = []

        async def contribute(
            self, contribution_type: str, content: object, tags: object, request_id: str
        ) -> str:
            if not self.up:
                raise ConnectionError("memory down")
            self.contributed.append(request_id)
            return "c-" + request_id

    flaky = Flaky()
    bus = Recorder()
    config = LearningConfig(server=server_config("learning", tmp_path), relay_interval_s=0.05)
    server = LearningServer(config, bus=bus, immutable_log=Recorder(), memory=flaky)
    async with serving(config.server, server) as (_, chan):
        stub = learning_pb2_grpc.LearningServiceStub(chan)
        await stub.IngestOutcomes(batch("b-1"))
        await stub.Analyze(pb.AnalyzeRequest())
        [waiting] = (await stub.ListPatterns(pb.ListPatternsRequest())).patterns
        assert waiting.contribution_id == ""
        flaky.up = True
        await stub.Analyze(pb.AnalyzeRequest())
        [sent] = (await stub.ListPatterns(pb.ListPatternsRequest())).patterns
        assert sent.contribution_id == "c-" + sent.pattern_id
        await insights_sent(bus)
        assert [e.event_type for e in bus.insights()] == ["insight.failure"]
