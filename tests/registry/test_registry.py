"""The registry core without gRPC, on SQLite and PostgreSQL, with a manual clock."""

from __future__ import annotations

import asyncio

import pytest

from services.common.errors import InvalidArgument, NotFound
from services.common.storage import Database
from services.registry.model import ChangeKind, DomainStatus, Metrics, Registration
from services.registry.registry import Registry, RegistrySettings, WatchBatch
from services.registry.store import RegistryStore
from tests.conftest import DatabaseTarget
from tests.support import ManualClock, Pause, give_up_midway, pause_after_commit


def reg(domain_id: str = "ai_domain", **overrides: object) -> Registration:
    fields: dict[str, object] = {
        "domain_id": domain_id,
        "host": "127.0.0.1",
        "port": 8202,
        "capabilities": ("chat", "ml", "prediction"),
    }
    fields.update(overrides)
    return Registration(**fields)  # type: ignore[arg-type]


async def test_register_creates_then_updates_the_same_id(registry: Registry) -> None:
    first, created = await registry.register(reg())
    second, created_again = await registry.register(reg(port=9000, capabilities=("ml",)))

    assert created
    assert not created_again
    assert second.port == 9000
    assert second.capabilities == ("ml",)
    assert second.registered_at == first.registered_at
    assert (first.revision, second.revision) == (1, 2)
    assert registry.capability_map() == {"ml": ["ai_domain"]}


async def test_a_re_registration_keeps_the_fields_it_leaves_empty_and_says_so(
    registry: Registry,
) -> None:
    key = bytes(range(32))
    await registry.register(
        reg(
            capabilities=("ml", "analysis"),
            version="1.0.0",
            metadata={"owner": "ml-team"},
            public_key=key,
            lease_ttl_s=60.0,
        )
    )
    # Seed 000, example 1: the same id with only a port and capabilities.
    outcome = await registry.registered(reg(capabilities=("chat", "ml", "prediction")))

    record = outcome.record
    assert not outcome.created
    assert record.capabilities == ("chat", "ml", "prediction")
    assert (record.version, record.metadata, record.public_key) == (
        "1.0.0",
        {"owner": "ml-team"},
        key,
    )
    assert record.lease_ttl_s == 60.0
    assert outcome.kept_fields == ("version", "metadata", "public_key", "lease_ttl")
    assert outcome.changed_fields == ("capabilities",)


async def test_a_replacing_re_registration_clears_what_it_leaves_empty(
    registry: Registry,
) -> None:
    await registry.register(reg(version="1.0.0", metadata={"owner": "ml-team"}))
    outcome = await registry.registered(reg(), replace=True)
    assert (outcome.record.version, outcome.record.metadata) == ("", {})
    assert outcome.kept_fields == ()
    assert set(outcome.changed_fields) == {"version", "metadata"}


async def test_register_applies_the_default_lease(registry: Registry, clock: ManualClock) -> None:
    record, _ = await registry.register(reg())
    assert record.lease_ttl_s == 30
    assert record.lease_expires_at == clock.now + 30
    assert record.status is DomainStatus.HEALTHY


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"domain_id": ""}, "domain_id"),
        ({"domain_id": "has space"}, "domain_id"),
        ({"domain_id": "x" * 129}, "domain_id"),
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"host": ""}, "host"),
        ({"capabilities": ("ok", "bad cap")}, "capabilities[1]"),
        ({"capabilities": tuple(f"c{i}" for i in range(65))}, "capabilities"),
        ({"metadata": {"k": "v" * 1025}}, "metadata['k']"),
        ({"public_key": b"short"}, "public_key"),
        ({"lease_ttl_s": 0.5}, "lease_ttl"),
        ({"version": "v" * 65}, "version"),
    ],
)
async def test_bad_registration_names_the_field_and_writes_nothing(
    registry: Registry, overrides: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await registry.register(reg(**overrides))
    assert raised.value.field == field
    assert registry.revision == 0
    assert registry.stats().total == 0


async def test_duplicate_capabilities_are_dropped_in_order(registry: Registry) -> None:
    record, _ = await registry.register(reg(capabilities=("b", "a", "b")))
    assert record.capabilities == ("b", "a")


async def test_unknown_domain_is_not_found(registry: Registry) -> None:
    with pytest.raises(NotFound):
        registry.get("missing")
    with pytest.raises(NotFound):
        await registry.heartbeat("missing")
    with pytest.raises(NotFound):
        await registry.deregister("missing")


async def test_lapsed_lease_turns_unhealthy_then_is_removed_after_grace(
    registry: Registry, clock: ManualClock
) -> None:
    await registry.register(reg())
    clock.advance(29)
    assert await registry.sweep() == []

    clock.advance(1)
    [lapsed] = await registry.sweep()
    assert lapsed.kind is ChangeKind.STATUS_CHANGED
    assert registry.get("ai_domain").status is DomainStatus.UNHEALTHY
    assert registry.find("ml") == []

    clock.advance(59)
    assert await registry.sweep() == []
    clock.advance(1)
    [removed] = await registry.sweep()
    assert removed.kind is ChangeKind.REMOVED
    with pytest.raises(NotFound):
        registry.get("ai_domain")
    stats = registry.stats()
    assert (stats.leases_expired, stats.domains_reaped) == (1, 1)


async def test_heartbeat_renews_the_lease_without_a_new_revision(
    registry: Registry, clock: ManualClock
) -> None:
    await registry.register(reg())
    clock.advance(20)
    record = await registry.heartbeat(
        "ai_domain", Metrics(load=0.5, latency_ms=10, success_rate=0.9)
    )
    assert record.lease_expires_at == clock.now + 30
    assert record.metrics == Metrics(0.5, 10, 0.9)
    assert registry.revision == 1
    clock.advance(20)
    assert await registry.sweep() == []


async def test_heartbeat_revives_an_unhealthy_domain(
    registry: Registry, clock: ManualClock
) -> None:
    await registry.register(reg())
    clock.advance(31)
    await registry.sweep()
    record = await registry.heartbeat("ai_domain")
    assert record.status is DomainStatus.HEALTHY
    assert record.revision == 3


async def test_degraded_heartbeat_lowers_the_score_but_keeps_routing(registry: Registry) -> None:
    await registry.register(reg("a", capabilities=("ml",)))
    await registry.register(reg("b", capabilities=("ml",)))
    await registry.heartbeat("a", degraded=True)
    ranked = registry.find("ml")
    assert [r.domain_id for r, _ in ranked] == ["b", "a"]
    assert ranked[0][1] > ranked[1][1]


async def test_metrics_are_validated(registry: Registry) -> None:
    await registry.register(reg())
    with pytest.raises(InvalidArgument) as raised:
        await registry.heartbeat("ai_domain", Metrics(latency_ms=float("nan")))
    assert raised.value.field == "metrics.latency_ms"
    record = await registry.heartbeat("ai_domain", Metrics(load=3.0, success_rate=-1))
    assert (record.metrics.load, record.metrics.success_rate) == (1.0, 0.0)


async def test_find_ranks_by_score_and_respects_limit(registry: Registry) -> None:
    await registry.register(reg("busy", capabilities=("ml",)))
    await registry.register(reg("idle", capabilities=("ml",)))
    await registry.register(reg("generalist", capabilities=("ml", "chat", "x", "y")))
    await registry.heartbeat("busy", Metrics(load=0.9, latency_ms=300, success_rate=0.5))
    ranked = registry.find("ml")
    assert [r.domain_id for r, _ in ranked] == ["idle", "generalist", "busy"]
    assert [r.domain_id for r, _ in registry.find("ml", limit=1)] == ["idle"]
    assert registry.find("unknown-cap") == []


async def test_list_pages_through_every_domain_once(registry: Registry) -> None:
    for i in range(7):
        await registry.register(reg(f"d{i}", capabilities=("even",) if i % 2 == 0 else ("odd",)))
    seen: list[str] = []
    token = ""
    while True:
        page, token, total = registry.list_domains(size=3, token=token)
        seen += [r.domain_id for r in page]
        assert total == 7
        if not token:
            break
    assert seen == [f"d{i}" for i in range(7)]
    evens, _, total = registry.list_domains(capability="even")
    assert [r.domain_id for r in evens] == ["d0", "d2", "d4", "d6"]
    assert total == 4


async def test_list_rejects_bad_paging(registry: Registry) -> None:
    with pytest.raises(InvalidArgument) as raised:
        registry.list_domains(size=1001)
    assert raised.value.field == "page_size"
    with pytest.raises(InvalidArgument) as raised:
        registry.list_domains(token="not-a-token!")
    assert raised.value.field == "page_token"


async def test_state_survives_a_restart(
    database: DatabaseTarget, clock: ManualClock, settings: RegistrySettings
) -> None:
    def core() -> Registry:
        return Registry(
            RegistryStore(Database(database.url, schema=database.schema)), settings, clock
        )

    first = core()
    await first.open()
    await first.register(reg("a", metadata={"zone": "eu"}, public_key=b"k" * 32))
    await first.register(reg("b"))
    await first.heartbeat("a", Metrics(load=0.25, latency_ms=5, success_rate=1))
    await first.deregister("b")
    await first.close()
    await first.store.close()

    second = core()
    await second.open()
    try:
        record = second.get("a")
        assert record.metadata == {"zone": "eu"}
        assert record.public_key == b"k" * 32
        assert record.metrics.load == 0.25
        assert second.revision == 3
        with pytest.raises(NotFound):
            second.get("b")
    finally:
        await second.close()
        await second.store.close()


async def test_a_lease_that_lapsed_while_down_gets_one_ttl_of_grace(
    database: DatabaseTarget, clock: ManualClock, settings: RegistrySettings
) -> None:
    def core() -> Registry:
        return Registry(
            RegistryStore(Database(database.url, schema=database.schema)), settings, clock
        )

    first = core()
    await first.open()
    await first.register(reg())
    await first.close()
    await first.store.close()
    clock.advance(600)

    second = core()
    await second.open()
    try:
        assert await second.sweep() == []
        assert second.get("ai_domain").lease_expires_at == clock.now + 30
    finally:
        await second.close()
        await second.store.close()


async def _collect(registry: Registry, after: int, count: int) -> list[WatchBatch]:
    batches: list[WatchBatch] = []
    async for batch in registry.watch(after):
        batches.append(batch)
        if len(batches) == count:
            break
    return batches


async def test_watch_sends_a_snapshot_then_live_changes(registry: Registry) -> None:
    await registry.register(reg("a"))
    task = asyncio.create_task(_collect(registry, 0, 3))
    await asyncio.sleep(0.01)
    await registry.register(reg("b"))
    await registry.deregister("a")
    snapshot, registered, removed = await asyncio.wait_for(task, 5)
    assert [c.kind for c in snapshot.changes] == [ChangeKind.SNAPSHOT]
    assert snapshot.revision == 1
    assert not snapshot.reset
    assert [(c.kind, c.record.domain_id) for c in registered.changes + removed.changes] == [
        (ChangeKind.REGISTERED, "b"),
        (ChangeKind.REMOVED, "a"),
    ]
    assert removed.revision == 3


async def test_watch_resumes_after_a_revision_without_missing_changes(registry: Registry) -> None:
    for name in "abcd":
        await registry.register(reg(name))
    [batch] = await _collect(registry, 2, 1)
    assert not batch.reset
    assert [c.record.domain_id for c in batch.changes] == ["c", "d"]
    assert [c.revision for c in batch.changes] == [3, 4]


async def test_watch_from_beyond_the_history_restarts_with_a_snapshot(
    database: DatabaseTarget, clock: ManualClock
) -> None:
    settings = RegistrySettings(history=100)
    core = Registry(RegistryStore(Database(database.url, schema=database.schema)), settings, clock)
    await core.open()
    try:
        for i in range(150):
            await core.register(reg(f"d{i:03d}"))
        [batch] = await _collect(core, 10, 1)
        assert batch.reset
        assert len(batch.changes) == 150
        assert {c.kind for c in batch.changes} == {ChangeKind.SNAPSHOT}
        [future] = await _collect(core, 10_000, 1)
        assert future.reset
    finally:
        await core.close()
        await core.store.close()


async def test_watch_ends_when_the_registry_closes(registry: Registry) -> None:
    task = asyncio.create_task(_collect(registry, 0, 10))
    await asyncio.sleep(0.01)
    await registry.close()
    batches = await asyncio.wait_for(task, 5)
    assert len(batches) == 1


async def test_stats_count_by_status_and_capability(registry: Registry, clock: ManualClock) -> None:
    await registry.register(reg("a", capabilities=("ml",)))
    await registry.register(reg("b", capabilities=("ml", "chat"), lease_ttl_s=100))
    clock.advance(31)
    await registry.sweep()
    stats = registry.stats()
    assert stats.total == 2
    assert stats.by_status == {"HEALTHY": 1, "DEGRADED": 0, "UNHEALTHY": 1}
    assert stats.by_capability == {"chat": 1, "ml": 1}


def committed(monkeypatch: pytest.MonkeyPatch, registry: Registry) -> Pause:
    """Holds the registry's next write just after it commits."""
    return pause_after_commit(monkeypatch, registry.store, "writing")


async def test_a_registration_whose_caller_gives_up_midway_is_routable(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    await give_up_midway(registry.register(reg()), committed(monkeypatch, registry))
    assert registry.get("ai_domain").port == 8202
    assert [r.domain_id for r, _ in registry.find("ml")] == ["ai_domain"]
    assert registry.revision == 1


async def test_a_deregistration_whose_caller_gives_up_midway_is_no_longer_routable(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    await registry.register(reg())
    await give_up_midway(registry.deregister("ai_domain"), committed(monkeypatch, registry))
    with pytest.raises(NotFound):
        registry.get("ai_domain")
    assert registry.find("ml") == []
    with pytest.raises(NotFound):  # the retry agrees: it is gone
        await registry.deregister("ai_domain")


async def test_a_status_change_whose_heartbeat_gives_up_midway_is_seen_by_reads(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    await registry.register(reg())
    heartbeat = registry.heartbeat("ai_domain", degraded=True)
    await give_up_midway(heartbeat, committed(monkeypatch, registry))
    assert registry.get("ai_domain").status is DomainStatus.DEGRADED
    assert registry.revision == 2
