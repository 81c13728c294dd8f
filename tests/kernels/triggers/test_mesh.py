"""The mesh: exactly-once claims, the trust and governance validators, retries, dead
letters and the outcome records."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from services.common.action_peers import ActionFailed
from services.common.backoff import Backoff
from services.common.errors import Aborted, NotFound
from services.common.outbox import Outbox
from services.common.storage import Database
from services.kernels.triggers.mesh import MeshSettings, TriggerMesh
from services.kernels.triggers.model import FiringState, event_document, parse_rule
from services.kernels.triggers.store import TriggersStore, events_outbox, log_outbox
from tests.conftest import DatabaseTarget
from tests.kernels.scheduler.doubles import FakeClock, RecordingPeers, ScriptedGate
from tests.support import Pause, give_up_midway, pause_after_commit

WORKFLOW_RULE = {
    "rule_id": "start-document",
    "pattern": "document.uploaded",
    "condition": "data.size > `0`",
    "action": "workflow",
    "target": {"workflow_id": "document"},
    "input": {"document_id": "subject", "size": "data.size"},
}


class Trust:
    def __init__(self, scores: dict[str, float]) -> None:
        self.scores = scores

    async def score(self, domain_id: str) -> float:
        if domain_id not in self.scores:
            raise ActionFailed(f"no score for {domain_id}")
        return self.scores[domain_id]


@asynccontextmanager
async def mesh(
    target: DatabaseTarget,
    *,
    peers: RecordingPeers | None = None,
    gate: ScriptedGate | None = None,
    trust: Trust | None = None,
    clock: FakeClock | None = None,
) -> AsyncIterator[TriggerMesh]:
    store = TriggersStore(Database(target.url, schema=target.schema))
    await store.open()
    m = TriggerMesh(
        store,
        gate or ScriptedGate(),
        trust or Trust({"library": 0.9, "stranger": 0.1}),
        peers or RecordingPeers(),
        Outbox(store.db, events_outbox, "triggers"),
        Outbox(store.db, log_outbox, "triggers"),
        settings=MeshSettings(retry=Backoff(initial_s=5.0, factor=1.0, max_s=5.0)),
        clock=clock or FakeClock(),
    )
    await m.load()
    try:
        yield m
    finally:
        await store.close()


def uploaded(event_id: str = "ev-1", source: str = "library", size: int = 10) -> dict[str, Any]:
    return event_document(event_id, "document.uploaded", source, "doc-7", 1.0, {"size": size})


async def outbox_types(m: TriggerMesh, table: Any = events_outbox) -> list[str]:
    async with m.store.db.read() as conn:
        return list((await conn.scalars(select(table.c.event_type))).all())


async def test_a_matching_event_starts_the_workflow_once_with_the_mapped_input(
    database: DatabaseTarget,
) -> None:
    peers = RecordingPeers()
    async with mesh(database, peers=peers) as m:
        await m.put_rule(WORKFLOW_RULE)
        assert len(await m.observe(uploaded())) == 1
        assert await m.observe(uploaded()) == []  # the bus redelivered it
        await m.drain()
        await m.drain()
        assert [(w, d) for w, d, _ in peers.workflows] == [
            ("document", {"document_id": "doc-7", "size": 10})
        ]
        (_, firing), *_ = await m.store.list_firings()
        assert firing.state is FiringState.SUCCEEDED
        assert "trigger.fired" in await outbox_types(m)
        assert "trigger.fired" in await outbox_types(m, log_outbox)


async def test_an_event_failing_the_condition_claims_nothing(database: DatabaseTarget) -> None:
    async with mesh(database) as m:
        await m.put_rule(WORKFLOW_RULE)
        assert await m.observe(uploaded(size=0)) == []


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(deliveries=st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=12))
async def test_any_sequence_of_deliveries_fires_each_event_and_rule_once(
    tmp_path_factory: pytest.TempPathFactory, deliveries: list[str]
) -> None:
    path = tmp_path_factory.mktemp("mesh") / "t.db"
    peers = RecordingPeers()
    async with mesh(DatabaseTarget(f"sqlite+aiosqlite:///{path}"), peers=peers) as m:
        await m.put_rule(WORKFLOW_RULE)
        await m.put_rule({**WORKFLOW_RULE, "rule_id": "second"})
        # Deliveries race each other, as concurrent pushes from the bus would.
        await asyncio.gather(*(m.observe(uploaded(f"ev-{d}")) for d in deliveries))
        await asyncio.gather(m.drain(), m.drain())
        keys = [key for _, _, key in peers.workflows]
        assert len(keys) == len(set(keys)) == 2 * len(set(deliveries))


async def test_a_source_below_the_rules_trust_minimum_is_refused(
    database: DatabaseTarget,
) -> None:
    peers = RecordingPeers()
    async with mesh(database, peers=peers) as m:
        await m.put_rule({**WORKFLOW_RULE, "min_trust": 0.5})
        await m.observe(uploaded("ev-low", source="stranger"))
        await m.observe(uploaded("ev-high", source="library"))
        await m.drain()
        states = {f.event["id"]: f for _, f in await m.store.list_firings()}
        assert states["ev-low"].state is FiringState.REFUSED
        assert states["ev-low"].result["score"] == 0.1
        assert states["ev-high"].state is FiringState.SUCCEEDED
        assert len(peers.workflows) == 1
        assert "trigger.refused" in await outbox_types(m, log_outbox)


async def test_governance_sees_the_events_actor_action_and_resource_and_can_forbid(
    database: DatabaseTarget,
) -> None:
    peers = RecordingPeers()
    gate = ScriptedGate(denied_actors={"mallory"})
    async with mesh(database, peers=peers, gate=gate) as m:
        await m.put_rule(WORKFLOW_RULE)
        forbidden = event_document(
            "ev-m", "document.uploaded", "library", "d", 1.0, {"size": 1, "actor": "mallory"}
        )
        await m.observe(forbidden)
        await m.drain()
        assert gate.asked[0]["actor"] == "mallory"
        assert gate.asked[0]["action"] == "document.uploaded"
        assert gate.asked[0]["resource"] == "workflow:document"
        ((_, firing),) = await m.store.list_firings()
        assert firing.state is FiringState.DENIED
        assert peers.workflows == []


async def test_a_failing_action_is_retried_with_backoff_then_dead_lettered(
    database: DatabaseTarget,
) -> None:
    clock = FakeClock()
    peers = RecordingPeers(fail="orchestrator: UNAVAILABLE")
    async with mesh(database, peers=peers, clock=clock) as m:
        await m.put_rule({**WORKFLOW_RULE, "max_attempts": 3})
        await m.observe(uploaded())
        assert await m.drain() == 1
        assert await m.drain() == 0  # not due before its backoff
        clock.advance(5)
        assert await m.drain() == 1
        clock.advance(5)
        assert await m.drain() == 1
        ((_, firing),) = await m.store.list_firings()
        assert firing.state is FiringState.DEAD_LETTERED
        assert firing.attempts == 3
        assert "UNAVAILABLE" in firing.result["error"]
        assert (await outbox_types(m)).count("trigger.retrying") == 2
        assert "trigger.dead_lettered" in await outbox_types(m, log_outbox)


async def test_an_event_action_publishes_once_with_an_id_derived_from_the_firing(
    database: DatabaseTarget,
) -> None:
    async with mesh(database) as m:
        await m.put_rule(
            {
                "rule_id": "announce",
                "pattern": "document.*",
                "action": "event",
                "target": {"event_type": "document.noticed"},
                "input": {"id": "subject"},
            }
        )
        await m.observe(uploaded())
        await m.drain()
        async with m.store.db.read() as conn:
            rows = (
                await conn.execute(
                    select(events_outbox).where(events_outbox.c.event_type == "document.noticed")
                )
            ).all()
        assert [(r.data, r.event_id.startswith("trigger-")) for r in rows] == [
            ({"id": "doc-7"}, True)
        ]


async def test_a_task_action_asks_the_tasks_kernel_for_a_cycle(database: DatabaseTarget) -> None:
    peers = RecordingPeers()
    async with mesh(database, peers=peers) as m:
        await m.put_rule({**WORKFLOW_RULE, "action": "task", "target": {"reason": "look"}})
        await m.observe(uploaded())
        await m.drain()
        ((params, data, _),) = peers.domain_calls
        assert params == {"domain_id": "tasks", "action": "run_cycle"}
        assert data["reason"] == "look"


async def test_rules_are_versioned_and_updates_compare_and_set(database: DatabaseTarget) -> None:
    async with mesh(database) as m:
        first = await m.put_rule(WORKFLOW_RULE)
        second = await m.put_rule({**WORKFLOW_RULE, "condition": ""}, expected_version=1)
        assert (first.version, second.version) == (1, 2)
        with pytest.raises(Aborted):
            await m.put_rule(WORKFLOW_RULE, expected_version=1)
        await m.delete_rule("start-document")
        with pytest.raises(NotFound):
            await m.delete_rule("start-document")
        assert await m.store.get_rule("start-document") is None
        again = await m.put_rule(WORKFLOW_RULE)
        assert again.version == 4


async def test_file_rules_load_and_a_changed_file_rule_becomes_a_new_version(
    database: DatabaseTarget,
) -> None:
    async with mesh(database) as m:
        await m.load([parse_rule(WORKFLOW_RULE)])
        await m.load([parse_rule(WORKFLOW_RULE)])
        assert m.rules["start-document"].version == 1
        assert m.rules["start-document"].origin == "file"
        await m.load([parse_rule({**WORKFLOW_RULE, "min_trust": 0.3})])
        assert m.rules["start-document"].version == 2
        assert m.patterns() == ["document.uploaded"]


async def test_rule_changes_take_effect_even_when_their_caller_gives_up_midway(
    database: DatabaseTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with mesh(database) as m:
        subscribed: list[list[str]] = []
        m.on_rules_changed = lambda patterns: subscribed.append(list(patterns))

        # Each change is given up on just after its first transaction commits.
        def committed() -> Pause:
            return pause_after_commit(monkeypatch, m.store.db, "transaction")

        await give_up_midway(m.put_rule(WORKFLOW_RULE), committed())
        assert len(await m.observe(uploaded("ev-1"))) == 1
        assert subscribed[-1] == ["document.uploaded"]

        large_only = {**WORKFLOW_RULE, "condition": "data.size > `100`"}
        await give_up_midway(m.put_rule(large_only), committed())
        assert await m.observe(uploaded("ev-2", size=10)) == []

        await give_up_midway(m.delete_rule("start-document"), committed())
        assert await m.observe(uploaded("ev-3", size=1000)) == []
        assert subscribed[-1] == []
