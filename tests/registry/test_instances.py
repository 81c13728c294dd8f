"""Two registry cores on one PostgreSQL schema: what one writes, the other serves and
watches; leases, sweeps and the federation's quorum are one for both."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select

from services.common.errors import NotFound
from services.common.observers import MEMBER_METADATA_KEY, MEMBER_METADATA_VALUE
from services.common.outbox import Outbox
from services.common.storage import Database
from services.registry.federation import Federation
from services.registry.model import ChangeKind, DomainStatus, Metrics, Registration
from services.registry.registry import Registry, RegistrySettings
from services.registry.store import RegistryStore
from services.registry.suspicions import Report, SuspicionState
from services.registry.tables import changes
from tests.conftest import DatabaseTarget
from tests.support import ManualClock, eventually

SETTINGS = RegistrySettings(default_lease_ttl_s=30, deregister_after_s=60, history=1000)


def reg(domain_id: str, **metadata: str) -> Registration:
    return Registration(domain_id, "127.0.0.1", 9000, ("ml",), metadata=metadata)


def core(database: DatabaseTarget, clock: ManualClock) -> Registry:
    return Registry(RegistryStore(Database(database.url, schema=database.schema)), SETTINGS, clock)


@pytest.fixture
async def pair(
    database: DatabaseTarget, clock: ManualClock
) -> AsyncIterator[tuple[Registry, Registry]]:
    """Instances A and B of one registry."""
    if database.backend == "sqlite":
        pytest.skip("a SQLite file belongs to one instance")
    a, b = core(database, clock), core(database, clock)
    await a.open()
    await b.open()
    yield a, b
    for instance in (a, b):
        await instance.close()
        await instance.store.close()


async def changes_until(registry: Registry, after: int, revision: int) -> list[tuple[int, str]]:
    """(revision, domain id) of every change a watch from `after` sends up to `revision`."""
    seen: list[tuple[int, str]] = []
    async with asyncio.timeout(10):
        async for batch in registry.watch(after):
            assert not batch.reset
            seen.extend((c.revision, c.record.domain_id) for c in batch.changes)
            if batch.revision >= revision:
                return seen
    raise AssertionError("the watch ended early")


async def test_a_registration_on_one_instance_reaches_a_watch_on_the_other(
    pair: tuple[Registry, Registry],
) -> None:
    a, b = pair
    await a.register(reg("before"))
    watching = asyncio.create_task(changes_until(b, 1, 2))
    record, created = await a.register(reg("ai_domain"))
    assert created
    assert await watching == [(2, "ai_domain")]
    assert b.get("ai_domain").revision == record.revision


async def test_writes_on_both_instances_at_once_get_revisions_without_gaps_in_one_order(
    pair: tuple[Registry, Registry],
) -> None:
    a, b = pair
    watch_a = asyncio.create_task(changes_until(a, 0, 40))
    watch_b = asyncio.create_task(changes_until(b, 0, 40))
    await asyncio.gather(
        *(a.register(reg(f"a{i:02d}")) for i in range(20)),
        *(b.register(reg(f"b{i:02d}")) for i in range(20)),
    )
    seen_a, seen_b = await watch_a, await watch_b
    assert [revision for revision, _ in seen_a] == list(range(1, 41))
    assert seen_a == seen_b
    assert a.domain_count() == b.domain_count() == 40


async def test_a_watcher_catches_up_from_the_log_when_notifications_are_lost(
    pair: tuple[Registry, Registry],
) -> None:
    a, b = pair
    for task in b._tasks:  # B hears nothing any more; only its timer reads the log.
        if task.get_name() == "registry-listener":
            task.cancel()
    watching = asyncio.create_task(changes_until(b, 0, 3))
    for name in ("x", "y", "z"):
        await a.register(reg(name))
    assert await watching == [(1, "x"), (2, "y"), (3, "z")]


async def test_a_heartbeat_to_either_instance_renews_the_lease(
    pair: tuple[Registry, Registry], clock: ManualClock
) -> None:
    a, b = pair
    await a.register(reg("ai_domain"))
    clock.advance(20)
    renewed = await b.heartbeat("ai_domain", Metrics(load=0.5))
    assert renewed.lease_expires_at == clock.now + 30
    # The touch notification brings B's renewal to A's memory.
    await eventually(lambda: a.get("ai_domain").metrics.load == 0.5, within_s=10.0, every_s=0.01)
    assert a.get("ai_domain").lease_expires_at == renewed.lease_expires_at
    clock.advance(20)  # Past the lease A gave, within the one B renewed.
    assert await a.sweep() == []
    assert await b.sweep() == []


async def test_a_lapsed_lease_is_swept_once_whichever_instances_sweep(
    pair: tuple[Registry, Registry], clock: ManualClock
) -> None:
    a, b = pair
    await a.register(reg("ai_domain"))
    clock.advance(31)
    swept = await asyncio.gather(a.sweep(), b.sweep(), a.sweep(), b.sweep())
    lapsed = [c for batch in swept for c in batch]
    assert [(c.kind, c.record.status) for c in lapsed] == [
        (ChangeKind.STATUS_CHANGED, DomainStatus.UNHEALTHY)
    ]
    pending = await a.store.outbox.pending(100)
    assert [e.event_type for e in pending].count("domain.status_changed") == 1
    async with a.store.db.read() as conn:
        logged = (
            await conn.execute(
                select(func.count()).where(changes.c.kind == ChangeKind.STATUS_CHANGED.value)
            )
        ).scalar_one()
    assert logged == 1
    await b.catch_up()
    assert b.get("ai_domain").status is DomainStatus.UNHEALTHY


async def test_an_instance_that_starts_beside_a_running_one_grants_no_grace(
    pair: tuple[Registry, Registry], database: DatabaseTarget, clock: ManualClock
) -> None:
    a, _ = pair
    await a.register(reg("ai_domain"))
    clock.advance(31)
    late = core(database, clock)
    await late.open()
    try:
        assert late.get("ai_domain").lease_expires_at < clock.now
        [lapsed] = await late.sweep()
        assert lapsed.record.status is DomainStatus.UNHEALTHY
    finally:
        await late.close()
        await late.store.close()


async def test_reports_reaching_different_instances_count_toward_one_quorum(
    pair: tuple[Registry, Registry],
) -> None:
    a, b = pair
    members = ["alpha", "bravo", "charlie", "delta", "echo"]
    for member in members:
        await a.register(reg(member, **{MEMBER_METADATA_KEY: MEMBER_METADATA_VALUE}))
    await b.catch_up()
    federations = [
        Federation(instance, Outbox(instance.store.db, instance.store.outbox.table, "registry"))
        for instance in (a, b)
    ]
    suspect = "charlie"
    observers = federations[0].observers(suspect)
    assert federations[1].observers(suspect) == observers
    first, _ = await federations[0].report(Report(observers[0], suspect, 5, confirmed=True))
    assert first is not None
    assert first.state is SuspicionState.SUSPECTED
    second, _ = await federations[1].report(Report(observers[1], suspect, 5, confirmed=True))
    assert second is not None
    assert second.state is SuspicionState.CONFIRMED_DOWN
    assert second.confirming == frozenset(observers[:2])
    listed, _ = await federations[0].page()
    assert [(s.suspect_id, s.state) for s in listed] == [(suspect, SuspicionState.CONFIRMED_DOWN)]


async def test_a_domain_registered_on_one_instance_a_moment_ago_is_found_on_the_other(
    pair: tuple[Registry, Registry],
) -> None:
    a, b = pair
    await asyncio.sleep(0.2)  # Let B's first catch-up end: cancelling it mid-query is noisy.
    for task in b._tasks:  # B follows nothing by itself any more.
        task.cancel()
    await a.register(reg("ai_domain"))
    with pytest.raises(NotFound):
        b.get("ai_domain")
    found = await b.lookup("ai_domain")
    assert found.revision == 1
    with pytest.raises(NotFound):
        await b.lookup("nobody")
