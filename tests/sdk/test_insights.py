"""Seed 001's learning loop as a test: the outcomes of one domain's action show a pattern,
the learning kernel shares it, a second domain adjusts its setting and reports the
result, and a third tracks the improvement through the knowledge's confidence."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from grace.kernels.learning.v1 import learning_pb2 as pb
from grace.kernels.learning.v1 import learning_pb2_grpc
from services.common.config import sqlite_url
from services.common.outbox import OutboxEvent
from services.common.storage import Database
from services.kernels.learning.config import LearningConfig
from services.kernels.learning.learning import LearningSettings
from services.kernels.learning.server import LearningServer
from services.memory.config import MemoryConfig
from services.memory.memory import MemorySettings
from services.memory.server import MemoryServer
from services.sdk import Context, Domain, Event, Insight
from services.sdk.dispatcher import Call, Dispatcher
from services.sdk.memory import MemoryClient
from services.sdk.outcomes import OutcomeRecorder, OutcomeRelay
from services.sdk.store import DomainTables, KeyValueStore, ResultStore, create_domain_tables
from tests.support import server_config, serving

LONGEST_CONTEXT = 4000


class Recorder:
    def __init__(self) -> None:
        self.events: list[OutboxEvent] = []

    async def publish(self, events: Sequence[OutboxEvent]) -> None:
        self.events.extend(events)


def ai_domain() -> Domain:
    domain = Domain("ai_domain", capabilities=["ml"])

    @domain.action("generate")
    async def generate(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
        if len(data["context"]) > LONGEST_CONTEXT:
            raise RuntimeError("context window exceeded")
        return {"answer": "ok"}

    return domain


def memory_domain() -> Domain:
    domain = Domain("memory_domain", capabilities=["storage"])

    @domain.action("context")
    async def context(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
        settings = await ctx.store.get("settings", "chunks") or {"size": 8000}
        return {"context": "x" * min(int(data["want"]), int(settings["size"]))}

    @domain.on_insight(capability="ml", action="generate", kind="failure")
    async def adjust(ctx: Context, insight: Insight) -> None:
        if insight.factor != "input_size":
            return
        # "4096-8191 bytes": inputs from 4096 bytes fail, so chunks stay below half that.
        low = int(insight.bucket.split("-")[0])
        before = await ctx.store.get("settings", "chunks") or {"size": 8000}
        await ctx.store.put("settings", "chunks", {"size": low // 2})
        await ctx.memory.apply(
            insight.contribution_id,
            success=True,
            detail=f"chunk size {before['size']} -> {low // 2}",
        )

    return domain


def monitoring_domain() -> Domain:
    domain = Domain("monitoring_domain", capabilities=["monitoring"])

    @domain.on_insight(capability="ml")
    async def track(ctx: Context, insight: Insight) -> None:
        knowledge = await ctx.memory.get(insight.contribution_id)
        await ctx.store.put(
            "tracked",
            insight.pattern_id,
            {
                "contribution_id": insight.contribution_id,
                "failure_rate": insight.evidence.get("in_bucket", {}).get("failure_rate"),
                "confidence": knowledge.confidence,
            },
        )

    @domain.action("improvement")
    async def improvement(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
        tracked = await ctx.store.get("tracked", str(data["pattern_id"]))
        if tracked is None:
            return {"tracked": False}
        now = await ctx.memory.get(tracked["contribution_id"])
        return {
            "tracked": True,
            "failure_rate_before": tracked["failure_rate"],
            "confidence_before": tracked["confidence"],
            "confidence_now": now.confidence,
        }

    return domain


async def dispatcher(
    domain: Domain, tmp_path: Path, memory: MemoryClient, stack: contextlib.AsyncExitStack
) -> tuple[Dispatcher, OutcomeRecorder]:
    db = Database(sqlite_url(tmp_path / f"{domain.domain_id}.db"))
    stack.push_async_callback(db.close)
    tables = DomainTables.of(domain.domain_id)
    await create_domain_tables(db, domain.domain_id, tables)
    recorder = OutcomeRecorder(db, tables)
    return (
        Dispatcher(
            domain,
            ResultStore(db, tables),
            KeyValueStore(db, tables),
            memory,
            None,
            8,
            outcomes=recorder,
        ),
        recorder,
    )


async def test_one_domains_discovery_adjusts_anothers_setting_and_a_third_tracks_it(
    tmp_path: Path,
) -> None:
    bus = Recorder()
    async with contextlib.AsyncExitStack() as stack:
        mem_server, mem_chan = await stack.enter_async_context(
            serving(
                server_config("memory", tmp_path),
                MemoryServer(
                    MemoryConfig(
                        server=server_config("memory", tmp_path), settings=MemorySettings()
                    ),
                    publisher=Recorder(),
                ),
            )
        )
        config = LearningConfig(
            server=server_config("learning", tmp_path),
            learning=LearningSettings(analyze_interval_s=3600),
            memory_address=mem_server.address,
            relay_interval_s=0.05,
        )
        learning = LearningServer(config, bus=bus, immutable_log=Recorder())
        _, learning_chan = await stack.enter_async_context(serving(config.server, learning))
        ai, ai_outcomes = await dispatcher(
            ai_domain(), tmp_path, MemoryClient("ai_domain", mem_chan), stack
        )
        memory, _ = await dispatcher(
            memory_domain(), tmp_path, MemoryClient("memory_domain", mem_chan), stack
        )
        monitoring, _ = await dispatcher(
            monitoring_domain(), tmp_path, MemoryClient("monitoring_domain", mem_chan), stack
        )

        async def ask(want: int) -> bool:
            context = (await memory.execute(Call("context", {"want": want}))).output["context"]
            try:
                await ai.execute(Call("generate", {"context": context}))
            except RuntimeError:
                return False
            return True

        # Before: long contexts fail, short ones work. No domain wrote any recording code.
        before = [await ask(8000 if i % 2 else 500) for i in range(200)]
        assert before.count(False) == 100
        relay = OutcomeRelay(ai_outcomes, learning_chan, "ai_domain", ["ml"])
        assert await relay.send_once() == 200

        stub = learning_pb2_grpc.LearningServiceStub(learning_chan)
        [pattern] = (await stub.Analyze(pb.AnalyzeRequest())).new_patterns
        assert (pattern.kind, pattern.factor) == ("failure", "input_size")
        await learning.relay.drain_once()
        [event] = {e.event_id: e for e in bus.events if e.event_type == "insight.failure"}.values()
        delivered = Event(
            id=event.event_id,
            event_type=event.event_type,
            source_domain=event.source_domain,
            data=dict(event.data),
        )
        # The monitoring domain sees it first and records the baseline.
        await monitoring.deliver(delivered)
        await memory.deliver(delivered)

        after = [await ask(8000 if i % 2 else 500) for i in range(100)]
        assert all(after)
        report = (
            await monitoring.execute(Call("improvement", {"pattern_id": pattern.pattern_id}))
        ).output
        assert report["tracked"] is True
        assert report["failure_rate_before"] == pytest.approx(1.0)
        assert report["confidence_now"] > report["confidence_before"]


async def test_an_insight_reaches_only_the_handlers_it_concerns(tmp_path: Path) -> None:
    domain = Domain("watcher", capabilities=["monitoring"])
    seen: list[str] = []

    @domain.on_insight(capability="ml", action="generate")
    async def about_generate(ctx: Context, insight: Insight) -> None:
        seen.append(f"generate:{insight.kind}")

    @domain.on_insight(capability="storage")
    async def about_storage(ctx: Context, insight: Insight) -> None:
        seen.append("storage")

    @domain.on_insight(kind="retries")
    async def about_retries(ctx: Context, insight: Insight) -> None:
        seen.append("retries")

    assert domain.event_patterns == ["insight.*", "insight.retries"]
    async with contextlib.AsyncExitStack() as stack:
        watcher, _ = await dispatcher(domain, tmp_path, MemoryClient("watcher", None), stack)
        data = {
            "id": "pat-1",
            "domain": "ai_domain",
            "action": "generate",
            "kind": "latency",
            "capabilities": ["ml"],
            "contribution_id": "c-1",
        }
        answer = await watcher.deliver(Event("e1", "insight.latency", "learning", data))
    assert answer.outcome.value == "ack"
    assert seen == ["generate:latency"]


def test_an_unknown_insight_kind_is_refused_when_declared() -> None:
    with pytest.raises(ValueError, match="insight kind 'sideways'"):
        Domain("watcher").on_insight(kind="sideways")
