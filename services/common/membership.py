"""One member of the health federation: whom it probes, what it suspects, how it refutes.

The protocol follows SWIM with Lifeguard's refinements, with the registry standing in for
gossip as the place where suspicions meet:

1. Every probe interval the member pings each of its targets (the `k` members after it on
   the ring of `services.common.observers`), so its probe traffic is `k` pings per interval
   whatever the size of the fleet.
2. A target that does not answer is probed indirectly: `indirect` other members, picked at
   random, ping it on this member's behalf. One answer is enough: the fault is then on this
   member's link, and nothing is suspected.
3. A target that fails both becomes a local suspicion at the incarnation last heard from it,
   reported to the registry. The member keeps probing it, and the ping says "I suspect you
   at incarnation N", so a suspect that is alive refutes at once.
4. A suspicion that outlives its timeout without the target answering or refuting is
   reported as a confirmation. The timeout shrinks as in Lifeguard
   (`services.common.observers.suspicion_timeout`): a lone suspicion waits
   `suspicion_max_timeout_s`, and each other observer of the target that suspects it too
   (read from the registry every round while this member holds an unconfirmed suspicion)
   brings it down towards `suspicion_timeout_s`. The registry declares the target down only
   when a quorum of distinct observers confirmed; the timeout only decides when this
   member's own confirmation is sent.
5. A member hears it is suspected (from a ping or from the registry's list) and refutes:
   it raises its incarnation above the suspected one and tells the registry. Incarnations
   start at the wall clock in milliseconds, so a restarted member outbids every suspicion
   of its previous life, and it announces itself to the registry when it starts.

`Member` is plain Python over two ports (`Prober`, `Coordinator`): the gRPC side is in
`services.common.peer_health`; tests and the benchmark drive it directly.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from services.common.observers import (
    DEFAULT_OBSERVERS,
    observers_of,
    suspicion_timeout,
    targets_of,
)

log = logging.getLogger(__name__)


class Unreachable(Exception):
    """A probe got no answer in time (or an error instead of an answer)."""


class Prober(Protocol):
    """How a member reaches other members."""

    async def ping(
        self, address: str, target_id: str, suspected_incarnation: int, timeout_s: float
    ) -> int:
        """Pings `target_id` at `address`; returns its incarnation or raises Unreachable."""

    async def probe_on_behalf(
        self,
        helper_address: str,
        helper_id: str,
        target_id: str,
        target_address: str,
        suspected_incarnation: int,
        timeout_s: float,
    ) -> int | None:
        """Asks `helper_id` to ping the target; its incarnation when it answered, else None.
        Raises Unreachable when the helper itself does not answer."""


@dataclass(frozen=True)
class OpenSuspicion:
    """An open suspicion as the registry holds it."""

    incarnation: int
    suspecting: frozenset[str] = frozenset()


class Coordinator(Protocol):
    """The registry, as a member needs it."""

    async def members(self) -> dict[str, str]:
        """Every federation member: id -> address."""

    async def suspected(self) -> dict[str, OpenSuspicion]:
        """Open suspicions by suspect id: the incarnation suspected and who suspects it."""

    async def report(self, suspect_id: str, incarnation: int, confirmed: bool) -> int | None:
        """Reports a suspicion (or, `confirmed`, a suspicion that timed out). Returns None
        when recorded, or the suspect's later incarnation that makes the report stale."""

    async def refute(self, incarnation: int) -> int:
        """Says this member is alive at `incarnation`; returns the highest one known."""


@dataclass(frozen=True)
class MemberSettings:
    """Tunables of the protocol.

    Attributes:
        observers: `k`: members each member probes (so each member has `k` observers).
        indirect: Helpers asked to probe a target whose direct probe failed.
        interval_s: Time between protocol rounds.
        probe_timeout_s: How long a direct ping may take.
        indirect_timeout_s: How long an indirect probe may take (the helper's own ping gets
            most of it).
        suspicion_timeout_s: The shortest time a suspicion waits for a refutation before
            it is reported as a confirmation: once all the target's other observers
            suspect it too.
        suspicion_max_timeout_s: The longest: a suspicion no other observer shares.
        refresh_s: How often membership and open suspicions are read from the registry.
    """

    observers: int = DEFAULT_OBSERVERS
    indirect: int = 3
    interval_s: float = 1.0
    probe_timeout_s: float = 0.5
    indirect_timeout_s: float = 1.0
    suspicion_timeout_s: float = 2.0
    suspicion_max_timeout_s: float = 6.0
    refresh_s: float = 5.0


@dataclass
class LocalSuspicion:
    """This member's suspicion of one target."""

    incarnation: int
    since: float
    confirmed: bool = False
    others: frozenset[str] = frozenset()
    """The target's other observers known to suspect the same incarnation."""


@dataclass
class Counters:
    """What the member sent, for the benchmark and for logs."""

    pings: int = 0
    indirect_probes: int = 0
    probes_on_behalf: int = 0
    suspicions: int = 0
    confirmations: int = 0
    refutations: int = 0


@dataclass
class RoundResult:
    """What one protocol round found, per target."""

    alive: list[str] = field(default_factory=list)
    indirect_only: list[str] = field(default_factory=list)
    suspected: list[str] = field(default_factory=list)
    confirmed: list[str] = field(default_factory=list)


class Member:
    """The protocol state of one member.

    Args:
        member_id: This member's id.
        prober: How to reach other members.
        coordinator: The registry.
        settings: Protocol tunables.
        clock: Monotonic seconds (suspicion timeouts); injectable.
        wall_clock: Epoch seconds (the first incarnation); injectable.
        rng: Picks the indirect helpers; injectable for repeatable tests.
    """

    def __init__(
        self,
        member_id: str,
        prober: Prober,
        coordinator: Coordinator,
        settings: MemberSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.member_id = member_id
        self.prober = prober
        self.coordinator = coordinator
        self.settings = settings or MemberSettings()
        self._clock = clock
        self._rng = rng or random.Random()
        self.incarnation = int(wall_clock() * 1000)
        self.members: dict[str, str] = {}
        self.incarnations: dict[str, int] = {}
        self.suspicions: dict[str, LocalSuspicion] = {}
        self.counters = Counters()
        self._refuted_to = 0
        self._refreshed_at: float | None = None

    # -- the member as a target --------------------------------------------------------

    def on_ping(self, suspected_incarnation: int) -> int:
        """Answers a ping; a ping that carries a suspicion of this member at or above its
        incarnation raises the incarnation (the refutation goes out with `refute_if_needed`).
        """
        if suspected_incarnation >= self.incarnation:
            self.incarnation = suspected_incarnation + 1
        return self.incarnation

    async def refute_if_needed(self) -> bool:
        """Tells the registry the current incarnation when it has not heard it yet; True
        when it did."""
        if self._refuted_to >= self.incarnation:
            return False
        incarnation = self.incarnation
        known = await self.coordinator.refute(incarnation)
        self.counters.refutations += 1
        self._refuted_to = incarnation
        if known > self.incarnation:
            # The registry knows a later incarnation of this id than ours (clock went back):
            # outbid it too.
            self.incarnation = known + 1
            await self.refute_if_needed()
        return True

    # -- the member as an observer -------------------------------------------------------

    @property
    def targets(self) -> list[str]:
        """The members this one probes."""
        return targets_of(self.member_id, self.members, self.settings.observers)

    async def refresh(self) -> None:
        """Reads membership and open suspicions; refutes a suspicion of this member."""
        members = await self.coordinator.members()
        self.members = {m: a for m, a in members.items() if m != self.member_id}
        self.members[self.member_id] = members.get(self.member_id, "")
        for gone in set(self.suspicions) - set(self.members):
            del self.suspicions[gone]
        suspected = await self.coordinator.suspected()
        mine = suspected.get(self.member_id)
        if mine is not None and mine.incarnation >= self.incarnation:
            self.incarnation = mine.incarnation + 1
        self._learn_confirmations(suspected)
        self._refreshed_at = self._clock()

    def _learn_confirmations(self, suspected: dict[str, OpenSuspicion]) -> None:
        """Adds the other observers that suspect what this member suspects (the same
        incarnation): each one shortens the suspicion's timeout."""
        for target, local in self.suspicions.items():
            shared = suspected.get(target)
            if local.confirmed or shared is None or shared.incarnation != local.incarnation:
                continue
            observers = set(observers_of(target, self.members, self.settings.observers))
            local.others |= (shared.suspecting & observers) - {self.member_id}

    def timeout_of(self, target: str) -> float:
        """The current timeout of this member's suspicion of `target` (see `suspicion_timeout`)."""
        local = self.suspicions.get(target)
        expected = len(observers_of(target, self.members, self.settings.observers)) - 1
        return suspicion_timeout(
            len(local.others) if local else 0,
            expected,
            self.settings.suspicion_timeout_s,
            self.settings.suspicion_max_timeout_s,
        )

    async def round(self) -> RoundResult:
        """One protocol period: refresh when due, refute when suspected, probe each target,
        and report new suspicions and timed-out ones."""
        now = self._clock()
        if self._refreshed_at is None or now - self._refreshed_at >= self.settings.refresh_s:
            await self.refresh()
        await self.refute_if_needed()
        result = RoundResult()
        targets = self.targets
        outcomes = await asyncio.gather(*(self._probe(t) for t in targets))
        for target, outcome in zip(targets, outcomes, strict=True):
            if outcome == "alive":
                result.alive.append(target)
            elif outcome == "indirect":
                result.indirect_only.append(target)
            else:
                result.suspected.append(target)
        if any(not s.confirmed for s in self.suspicions.values()):
            # Lifeguard's confirmations arrive by gossip; here they meet at the registry,
            # read each round only while a suspicion waits (nothing in a healthy fleet).
            try:
                self._learn_confirmations(await self.coordinator.suspected())
            except Exception as exc:
                log.info("could not read the open suspicions (%s); timeouts stay", exc)
        for target in targets:
            if await self._confirm_if_due(target):
                result.confirmed.append(target)
        return result

    async def _probe(self, target: str) -> str:
        address = self.members.get(target, "")
        suspicion = self.suspicions.get(target)
        suspected = suspicion.incarnation if suspicion else 0
        self.counters.pings += 1
        try:
            incarnation = await self.prober.ping(
                address, target, suspected, self.settings.probe_timeout_s
            )
        except Unreachable:
            pass
        else:
            self._heard(target, incarnation)
            return "alive"
        incarnation_seen = await self._probe_indirectly(target, address, suspected)
        if incarnation_seen is not None:
            self._heard(target, incarnation_seen)
            return "indirect"
        await self._suspect(target)
        return "suspected"

    async def _probe_indirectly(self, target: str, address: str, suspected: int) -> int | None:
        candidates = sorted(m for m in self.members if m not in (self.member_id, target))
        helpers = self._rng.sample(candidates, min(self.settings.indirect, len(candidates)))
        if not helpers:
            return None
        self.counters.indirect_probes += len(helpers)

        async def ask(helper: str) -> int | None:
            try:
                return await self.prober.probe_on_behalf(
                    self.members[helper],
                    helper,
                    target,
                    address,
                    suspected,
                    self.settings.indirect_timeout_s,
                )
            except Unreachable:
                return None

        answers = await asyncio.gather(*(ask(h) for h in helpers))
        heard = [a for a in answers if a is not None]
        return max(heard) if heard else None

    def _heard(self, target: str, incarnation: int) -> None:
        self.incarnations[target] = max(self.incarnations.get(target, 0), incarnation)
        if self.suspicions.pop(target, None) is not None:
            log.info("peer %s answers again (incarnation %d)", target, incarnation)

    async def _suspect(self, target: str) -> None:
        if target in self.suspicions:
            return
        suspicion = LocalSuspicion(self.incarnations.get(target, 0), self._clock())
        self.suspicions[target] = suspicion
        self.counters.suspicions += 1
        log.warning(
            "peer %s failed direct and indirect probes; suspected at incarnation %d",
            target,
            suspicion.incarnation,
        )
        try:
            later = await self.coordinator.report(target, suspicion.incarnation, False)
        except Exception as exc:
            log.warning("could not report the suspicion of %s: %s", target, exc)
            return
        self._restart_if_stale(target, later)

    def _restart_if_stale(self, target: str, later: int | None) -> bool:
        """A report about an incarnation the suspect already outbid (or one this member
        never heard) is stale: forget it and learn the later incarnation, so the next
        round suspects the target afresh if it still fails. True when stale."""
        if later is None:
            return False
        self.incarnations[target] = max(self.incarnations.get(target, 0), later)
        self.suspicions.pop(target, None)
        log.info(
            "suspicion of %s was stale (incarnation %d is known); probing again", target, later
        )
        return True

    async def _confirm_if_due(self, target: str) -> bool:
        suspicion = self.suspicions.get(target)
        if suspicion is None or suspicion.confirmed:
            return False
        if self._clock() - suspicion.since < self.timeout_of(target):
            return False
        try:
            later = await self.coordinator.report(target, suspicion.incarnation, True)
        except Exception as exc:
            log.warning("could not report the confirmation of %s: %s", target, exc)
            return False
        if self._restart_if_stale(target, later):
            return False
        suspicion.confirmed = True
        self.counters.confirmations += 1
        log.warning(
            "peer %s: suspicion timed out unrefuted (%d other observers agree); "
            "confirmation reported",
            target,
            len(suspicion.others),
        )
        return True

    async def probe_for(
        self, target_id: str, address: str, suspected_incarnation: int, timeout_s: float
    ) -> int | None:
        """Pings a target on another member's behalf; its incarnation, or None."""
        self.counters.probes_on_behalf += 1
        try:
            return await self.prober.ping(address, target_id, suspected_incarnation, timeout_s)
        except Unreachable:
            return None

    async def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        """Runs rounds every `interval_s` until cancelled; a failing round is logged and the
        next one tries again (the registry may be away)."""
        while not stop():
            started = self._clock()
            try:
                await self.round()
            except Exception as exc:
                log.info("health federation round failed (%s); retrying", exc)
            elapsed = self._clock() - started
            await asyncio.sleep(max(0.0, self.settings.interval_s - elapsed))
