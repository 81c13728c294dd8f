"""Several instances of one domain in the registry core, on SQLite and PostgreSQL: each
holds its own lease, the domain stays healthy while any does, and only a lapsed instance
leaves routing."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from services.common.errors import InvalidArgument, NotFound
from services.common.storage import Database
from services.registry.model import ChangeKind, DomainStatus, Metrics, Registration
from services.registry.registry import Registry, RegistrySettings
from services.registry.store import RegistryStore
from services.registry.tables import domains
from tests.conftest import DatabaseTarget
from tests.support import ManualClock


def instance(port: int, instance_id: str | None = None) -> Registration:
    return Registration(
        "ai_domain",
        "127.0.0.1",
        port,
        ("ml",),
        instance_id=f"127.0.0.1:{port}" if instance_id is None else instance_id,
    )


def live_addresses(registry: Registry) -> list[str]:
    return [i.address for i in registry.get("ai_domain").live_instances]


async def test_two_instances_hold_their_own_leases_and_one_lapsing_leaves_the_other(
    registry: Registry, clock: ManualClock
) -> None:
    _, created = await registry.register(instance(9001))
    clock.advance(10)
    second, created_again = await registry.register(instance(9002))

    assert (created, created_again) == (True, False)
    assert [i.instance_id for i in second.instances] == ["127.0.0.1:9001", "127.0.0.1:9002"]
    assert second.address == "127.0.0.1:9001"  # The first healthy id stands for the domain.
    assert second.status is DomainStatus.HEALTHY

    # Only the second heartbeats: the first's lease (30 s from its registration) lapses.
    clock.advance(15)
    await registry.heartbeat("ai_domain", Metrics(load=0.5), instance_id="127.0.0.1:9002")
    clock.advance(10)
    [lapsed] = await registry.sweep()

    assert lapsed.kind is ChangeKind.UPDATED  # The domain's status did not move.
    record = registry.get("ai_domain")
    assert record.status is DomainStatus.HEALTHY
    assert record.address == "127.0.0.1:9002"  # The survivor now stands for the domain.
    assert record.metrics.load == 0.5
    assert live_addresses(registry) == ["127.0.0.1:9002"]
    assert record.instance("127.0.0.1:9001").status is DomainStatus.UNHEALTHY  # type: ignore[union-attr]
    [(found, _)] = registry.find("ml")
    assert [i.address for i in found.live_instances] == ["127.0.0.1:9002"]

    # Its heartbeat brings the lapsed instance back (a revision: its status moved).
    revision = registry.revision
    back = await registry.heartbeat("ai_domain", instance_id="127.0.0.1:9001")
    assert back.revision == revision + 1
    assert live_addresses(registry) == ["127.0.0.1:9001", "127.0.0.1:9002"]
    # Each instance change is announced as an update of the domain, with its instances.
    events = await registry.store.outbox.pending(20)
    assert [e.event_type for e in events][-2:] == ["domain.updated", "domain.updated"]
    assert [(i["address"], i["status"]) for i in events[-2].data["instances"]] == [
        ("127.0.0.1:9001", "UNHEALTHY"),
        ("127.0.0.1:9002", "HEALTHY"),
    ]
    assert {i["status"] for i in events[-1].data["instances"]} == {"HEALTHY"}


async def test_a_domain_goes_unhealthy_with_its_last_instance_and_is_removed_with_it(
    registry: Registry, clock: ManualClock
) -> None:
    await registry.register(instance(9001))
    await registry.register(instance(9002))
    clock.advance(30)
    [lapsed] = await registry.sweep()
    assert lapsed.kind is ChangeKind.STATUS_CHANGED
    assert registry.get("ai_domain").status is DomainStatus.UNHEALTHY
    assert registry.find("ml") == []

    clock.advance(60)
    [removed] = await registry.sweep()
    assert removed.kind is ChangeKind.REMOVED
    with pytest.raises(NotFound):
        registry.get("ai_domain")


async def test_an_instance_past_the_grace_period_is_removed_while_another_serves(
    registry: Registry, clock: ManualClock
) -> None:
    await registry.register(instance(9001))
    await registry.register(instance(9002))
    for _ in range(4):  # 100 s: past the first's lease and its 60 s grace period.
        clock.advance(25)
        await registry.heartbeat("ai_domain", instance_id="127.0.0.1:9002")
        await registry.sweep()

    record = registry.get("ai_domain")
    assert [i.instance_id for i in record.instances] == ["127.0.0.1:9002"]
    with pytest.raises(NotFound):
        await registry.heartbeat("ai_domain", instance_id="127.0.0.1:9001")


async def test_deregistering_an_instance_keeps_the_domain_until_its_last(
    registry: Registry,
) -> None:
    await registry.register(instance(9001))
    await registry.register(instance(9002))

    await registry.deregister("ai_domain", instance_id="127.0.0.1:9001")
    assert live_addresses(registry) == ["127.0.0.1:9002"]
    with pytest.raises(NotFound):
        await registry.deregister("ai_domain", instance_id="127.0.0.1:9001")

    await registry.deregister("ai_domain", instance_id="127.0.0.1:9002")
    with pytest.raises(NotFound):
        registry.get("ai_domain")


async def test_the_default_instance_behaves_as_the_one_record_did(registry: Registry) -> None:
    await registry.register(instance(9001, instance_id=""))
    moved, _ = await registry.register(instance(9005, instance_id=""))

    assert [(i.instance_id, i.port) for i in moved.instances] == [("", 9005)]
    assert moved.port == 9005
    await registry.heartbeat("ai_domain")
    await registry.deregister("ai_domain")
    with pytest.raises(NotFound):
        registry.get("ai_domain")


async def test_an_instance_id_with_spaces_is_refused(registry: Registry) -> None:
    with pytest.raises(InvalidArgument, match="instance_id"):
        await registry.register(instance(9001, instance_id="a b"))


async def test_instances_and_their_leases_survive_a_restart(
    database: DatabaseTarget, clock: ManualClock, settings: RegistrySettings
) -> None:
    def core() -> Registry:
        store = RegistryStore(Database(database.url, schema=database.schema))
        return Registry(store, settings, clock)

    first = core()
    await first.open()
    await first.register(instance(9001))
    await first.register(instance(9002))
    clock.advance(20)
    await first.heartbeat("ai_domain", instance_id="127.0.0.1:9002")
    await first.close()
    await first.store.close()

    again = core()
    await again.open()
    try:
        leases = {i.instance_id: i.lease_expires_at for i in again.get("ai_domain").instances}
        assert leases["127.0.0.1:9002"] - leases["127.0.0.1:9001"] == 20
        clock.advance(15)  # Past the first's lease only.
        await again.sweep()
        assert live_addresses(again) == ["127.0.0.1:9002"]
    finally:
        await again.close()
        await again.store.close()


async def test_a_row_written_before_instances_reads_as_one_default_instance(
    registry: Registry, clock: ManualClock
) -> None:
    await registry.register(instance(9001, instance_id=""))
    async with registry.store.db.transaction() as conn:
        await conn.execute(update(domains).values(instances=None, sweep_due_at=None))
    [record] = await registry.store.records(["ai_domain"])
    assert [(i.instance_id, i.address) for i in record.instances] == [("", "127.0.0.1:9001")]

    assert await registry.sweep() == []  # Nothing due yet; the sweep writes its due time.
    clock.advance(30)
    [lapsed] = await registry.sweep()
    assert lapsed.kind is ChangeKind.STATUS_CHANGED
