"""The member core of the health federation, over an in-memory fleet."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from services.common.membership import Member, MemberSettings, OpenSuspicion, Unreachable
from services.registry.suspicions import Report, SuspicionBook, SuspicionState
from tests.support import ManualClock


@dataclass
class Fleet:
    """Members on one in-memory network: a down member or a cut link does not answer."""

    members: dict[str, Member] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    cut: set[frozenset[str]] = field(default_factory=set)
    book: SuspicionBook = field(default_factory=SuspicionBook)
    quorum: int = 2

    def reachable(self, source: str, target: str) -> bool:
        return target not in self.down and frozenset((source, target)) not in self.cut


@dataclass
class FleetProber:
    fleet: Fleet
    member_id: str

    async def ping(
        self, address: str, target_id: str, suspected_incarnation: int, timeout_s: float
    ) -> int:
        if not self.fleet.reachable(self.member_id, target_id):
            raise Unreachable(target_id)
        target = self.fleet.members[target_id]
        incarnation = target.on_ping(suspected_incarnation)
        await target.refute_if_needed()
        return incarnation

    async def probe_on_behalf(
        self,
        helper_address: str,
        helper_id: str,
        target_id: str,
        target_address: str,
        suspected_incarnation: int,
        timeout_s: float,
    ) -> int | None:
        if not self.fleet.reachable(self.member_id, helper_id):
            raise Unreachable(helper_id)
        helper = self.fleet.members[helper_id]
        return await helper.probe_for(target_id, target_address, suspected_incarnation, timeout_s)


@dataclass
class FleetCoordinator:
    fleet: Fleet
    member_id: str

    async def members(self) -> dict[str, str]:
        return {m: f"{m}:1" for m in self.fleet.members}

    async def suspected(self) -> dict[str, OpenSuspicion]:
        return {
            s.suspect_id: OpenSuspicion(s.incarnation, s.suspecting) for s in self.fleet.book.all()
        }

    async def report(self, suspect_id: str, incarnation: int, confirmed: bool) -> int | None:
        suspicion, _ = self.fleet.book.report(
            Report(self.member_id, suspect_id, incarnation, confirmed),
            [],
            self.fleet.quorum,
            0.0,
        )
        return None if suspicion is not None else self.fleet.book.incarnation(suspect_id)

    async def refute(self, incarnation: int) -> int:
        known, _ = self.fleet.book.refute(self.member_id, incarnation)
        return known


def make_fleet(size: int, clock: ManualClock, *, observers: int = 3, indirect: int = 2) -> Fleet:
    fleet = Fleet()
    settings = MemberSettings(
        observers=observers, indirect=indirect, suspicion_timeout_s=2.0, suspicion_max_timeout_s=6.0
    )
    for i in range(size):
        member_id = f"m{i}"
        fleet.members[member_id] = Member(
            member_id,
            FleetProber(fleet, member_id),
            FleetCoordinator(fleet, member_id),
            settings,
            clock=clock,
            wall_clock=lambda: 1000.0,
            rng=random.Random(i),
        )
    return fleet


async def rounds(fleet: Fleet, clock: ManualClock, count: int) -> None:
    for _ in range(count):
        for member_id, member in fleet.members.items():
            if member_id not in fleet.down:
                await member.round()
        clock.advance(1.0)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(0.0)


async def test_a_healthy_fleet_suspects_no_one(clock: ManualClock) -> None:
    fleet = make_fleet(6, clock)
    await rounds(fleet, clock, 5)
    assert fleet.book.all() == []
    assert all(m.counters.pings == 5 * 3 for m in fleet.members.values())


async def test_a_stopped_member_is_suspected_then_confirmed_by_its_observers(
    clock: ManualClock,
) -> None:
    fleet = make_fleet(6, clock)
    await rounds(fleet, clock, 1)
    fleet.down.add("m2")
    await rounds(fleet, clock, 1)
    suspicion = fleet.book.get("m2")
    assert suspicion is not None
    assert suspicion.state is SuspicionState.SUSPECTED
    await rounds(fleet, clock, 4)
    suspicion = fleet.book.get("m2")
    assert suspicion is not None
    assert suspicion.state is SuspicionState.CONFIRMED_DOWN
    assert len(suspicion.confirming) == 3
    assert suspicion.incarnation == 1_000_000


async def test_one_cut_link_is_bridged_by_indirect_probes_and_suspects_no_one(
    clock: ManualClock,
) -> None:
    fleet = make_fleet(6, clock)
    await rounds(fleet, clock, 1)
    target = fleet.members["m0"].targets[0]
    fleet.cut.add(frozenset(("m0", target)))
    await rounds(fleet, clock, 6)
    assert fleet.book.all() == []
    assert fleet.members["m0"].counters.indirect_probes > 0


async def test_a_suspect_that_is_alive_refutes_with_a_higher_incarnation(
    clock: ManualClock,
) -> None:
    fleet = make_fleet(5, clock)
    await rounds(fleet, clock, 1)
    target = "m3"
    before = fleet.members[target].incarnation
    # Another observer suspected it wrongly (its own network was at fault).
    fleet.book.report(Report("m0", target, before, False), [], 2, 0.0)
    await rounds(fleet, clock, 6)
    assert fleet.book.get(target) is None
    assert fleet.members[target].incarnation > before
    assert fleet.members[target].counters.refutations >= 2


async def test_a_restarted_member_outbids_the_confirmation_of_its_previous_life(
    clock: ManualClock,
) -> None:
    fleet = make_fleet(5, clock)
    await rounds(fleet, clock, 1)
    fleet.down.add("m1")
    await rounds(fleet, clock, 6)
    confirmed = fleet.book.get("m1")
    assert confirmed is not None
    assert confirmed.state is SuspicionState.CONFIRMED_DOWN
    restarted = Member(
        "m1",
        FleetProber(fleet, "m1"),
        FleetCoordinator(fleet, "m1"),
        MemberSettings(indirect=2),
        clock=clock,
        wall_clock=lambda: 2000.0,
    )
    fleet.members["m1"] = restarted
    fleet.down.discard("m1")
    await rounds(fleet, clock, 2)
    assert fleet.book.get("m1") is None
    assert all("m1" not in m.suspicions for m in fleet.members.values())


@pytest.mark.parametrize("size", [10, 50])
async def test_probe_traffic_per_member_does_not_grow_with_the_fleet(
    clock: ManualClock, size: int
) -> None:
    fleet = make_fleet(size, clock)
    await rounds(fleet, clock, 3)
    assert {m.counters.pings for m in fleet.members.values()} == {9}
    assert sum(m.counters.indirect_probes for m in fleet.members.values()) == 0


async def test_an_observer_that_never_heard_the_suspect_learns_its_incarnation_and_confirms(
    clock: ManualClock,
) -> None:
    fleet = make_fleet(5, clock)
    # Every member announced its incarnation, but nobody has probed anybody yet.
    for member in fleet.members.values():
        await member.refresh()
        await member.refute_if_needed()
    fleet.down.add("m4")
    await rounds(fleet, clock, 8)
    suspicion = fleet.book.get("m4")
    assert suspicion is not None
    assert suspicion.state is SuspicionState.CONFIRMED_DOWN
    assert suspicion.incarnation == 1_000_000


async def test_a_suspicion_every_observer_shares_is_confirmed_after_the_shortest_timeout(
    clock: ManualClock,
) -> None:
    fleet = make_fleet(6, clock)
    await rounds(fleet, clock, 1)
    fleet.down.add("m2")
    observers = [m for m in fleet.members.values() if "m2" in m.targets]
    await rounds(fleet, clock, 2)
    # Each observer heard of the other two: its timeout is down to the minimum.
    assert {o.timeout_of("m2") for o in observers} == {2.0}
    await rounds(fleet, clock, 1)
    suspicion = fleet.book.get("m2")
    assert suspicion is not None
    assert suspicion.state is SuspicionState.CONFIRMED_DOWN
    assert suspicion.confirming == {o.member_id for o in observers}


async def test_a_lone_suspicion_waits_longest_so_the_suspect_refutes_before_a_confirmation(
    clock: ManualClock,
) -> None:
    fleet = make_fleet(6, clock, indirect=0)
    await rounds(fleet, clock, 1)
    observer = fleet.members["m0"]
    target = observer.targets[0]
    fleet.cut.add(frozenset(("m0", target)))  # only m0 loses the target
    await rounds(fleet, clock, 1)
    assert target in observer.suspicions
    assert observer.timeout_of(target) == 6.0
    # Past the shortest timeout, and past a fixed 3 s one: nothing confirmed yet, and the
    # target, reading the registry at its next refresh, refutes.
    await rounds(fleet, clock, 4)
    assert observer.counters.confirmations == 0
    await rounds(fleet, clock, 4)
    assert observer.counters.confirmations == 0
    assert fleet.members[target].counters.refutations >= 2
    suspicion = fleet.book.get(target)
    assert suspicion is None or suspicion.state is SuspicionState.SUSPECTED
