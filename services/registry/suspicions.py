"""The quorum rule of the health federation, as plain state: suspicions per suspect.

Observers report a suspect that failed their direct and indirect probes (a suspicion) and,
once their own suspicion timeout passed without a refutation, a confirmation. `SuspicionBook`
keeps, per suspect, the distinct observers of each kind at the incarnation suspected, and
turns a suspicion into CONFIRMED_DOWN only when at least `quorum` distinct observers have
confirmed. The suspect clears it by refuting with a higher incarnation (SWIM's rule: only
the member itself can say it is alive, and only by outbidding the suspicion). Reports about
an incarnation lower than one already refuted are stale and change nothing.

Each call returns the transition it made (`Transition`), from which the registry writes the
`domain.suspected`, `domain.down_confirmed`, `domain.recovered` and
`domain.suspicion_refuted` events. Nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from services.common.errors import InvalidArgument


class SuspicionState(enum.Enum):
    """Where a suspicion stands."""

    SUSPECTED = "SUSPECTED"
    CONFIRMED_DOWN = "CONFIRMED_DOWN"


class TransitionKind(enum.Enum):
    """What a report or refutation changed; each has its event."""

    SUSPECTED = "domain.suspected"
    DOWN_CONFIRMED = "domain.down_confirmed"
    REFUTED = "domain.suspicion_refuted"
    RECOVERED = "domain.recovered"


@dataclass(frozen=True)
class Suspicion:
    """The registry's record of one suspected domain.

    Attributes:
        suspect_id: The suspected domain.
        incarnation: The suspect's incarnation the suspicion is about.
        state: SUSPECTED, or CONFIRMED_DOWN once a quorum confirmed.
        suspecting: Distinct observers that reported failed probes.
        confirming: Distinct observers whose suspicion timed out unrefuted.
        observers: The suspect's assigned observers when last reported.
        quorum: Confirmations needed.
        suspected_at: When the first report arrived (epoch seconds).
        confirmed_at: When the quorum was reached; 0 while only suspected.
    """

    suspect_id: str
    incarnation: int
    state: SuspicionState
    suspecting: frozenset[str]
    confirming: frozenset[str]
    observers: tuple[str, ...]
    quorum: int
    suspected_at: float
    confirmed_at: float = 0.0

    def event_data(self) -> dict[str, object]:
        """The data of the events about this suspicion."""
        return {
            "domain_id": self.suspect_id,
            "incarnation": self.incarnation,
            "state": self.state.value,
            "suspecting": sorted(self.suspecting),
            "confirming": sorted(self.confirming),
            "observers": list(self.observers),
            "quorum": self.quorum,
        }


@dataclass(frozen=True)
class Transition:
    """One change a report or refutation made, and the suspicion it concerns."""

    kind: TransitionKind
    suspicion: Suspicion


@dataclass(frozen=True)
class Report:
    """One observer's report.

    Attributes:
        observer_id: Who reports.
        suspect_id: About whom.
        incarnation: The suspect's incarnation the observer knew.
        confirmed: True when the observer's suspicion timed out without a refutation.
    """

    observer_id: str
    suspect_id: str
    incarnation: int
    confirmed: bool = False


class SuspicionBook:
    """Open suspicions and the highest incarnation known per domain.

    Args:
        open_suspicions: Suspicions to start from (a stored book, or the part of it about
            one suspect).
        incarnations: Highest incarnations known to start from.
    """

    def __init__(
        self,
        open_suspicions: Iterable[Suspicion] = (),
        incarnations: Mapping[str, int] | None = None,
    ) -> None:
        self._open: dict[str, Suspicion] = {s.suspect_id: s for s in open_suspicions}
        self._incarnations: dict[str, int] = dict(incarnations or {})

    def get(self, suspect_id: str) -> Suspicion | None:
        """The open suspicion of `suspect_id`, or None."""
        return self._open.get(suspect_id)

    def incarnation(self, domain_id: str) -> int:
        """The highest incarnation of `domain_id` known (0 when none)."""
        return self._incarnations.get(domain_id, 0)

    def all(self) -> list[Suspicion]:
        """Every open suspicion, by suspect id."""
        return [self._open[k] for k in sorted(self._open)]

    def forget(self, domain_id: str) -> None:
        """Drops everything about a domain (it left the registry)."""
        self._open.pop(domain_id, None)
        self._incarnations.pop(domain_id, None)

    def plan_report(
        self, report: Report, observers: Sequence[str], quorum: int, now: float
    ) -> tuple[Suspicion | None, list[Transition]]:
        """The suspicion after `report` and its transitions, without applying them (so the
        caller can persist the events first; then `apply`). None when the report is stale.
        """
        if report.observer_id == report.suspect_id:
            raise InvalidArgument("observer_id", "must differ from suspect_id")
        if report.incarnation < 0:
            raise InvalidArgument("incarnation", "must not be negative")
        if quorum < 1:
            raise InvalidArgument("quorum", "must be at least 1")
        if report.incarnation < self.incarnation(report.suspect_id):
            return None, []
        current = self._open.get(report.suspect_id)
        if current is not None and report.incarnation < current.incarnation:
            return current, []
        transitions: list[Transition] = []
        if current is None or (
            report.incarnation > current.incarnation and current.state is SuspicionState.SUSPECTED
        ):
            current = Suspicion(
                suspect_id=report.suspect_id,
                incarnation=report.incarnation,
                state=SuspicionState.SUSPECTED,
                suspecting=frozenset(),
                confirming=frozenset(),
                observers=tuple(observers),
                quorum=quorum,
                suspected_at=now,
            )
            first = True
        else:
            first = False
        updated = dataclasses.replace(
            current,
            suspecting=current.suspecting | {report.observer_id},
            confirming=current.confirming | ({report.observer_id} if report.confirmed else set()),
            observers=tuple(observers),
            quorum=quorum,
        )
        if first:
            transitions.append(Transition(TransitionKind.SUSPECTED, updated))
        if updated.state is SuspicionState.SUSPECTED and len(updated.confirming) >= updated.quorum:
            updated = dataclasses.replace(
                updated, state=SuspicionState.CONFIRMED_DOWN, confirmed_at=now
            )
            transitions.append(Transition(TransitionKind.DOWN_CONFIRMED, updated))
        return updated, transitions

    def plan_refute(self, domain_id: str, incarnation: int) -> tuple[int, list[Transition]]:
        """The incarnation known after `domain_id` refutes at `incarnation`, and the
        transition (REFUTED or RECOVERED) when it clears an open suspicion."""
        if incarnation < 0:
            raise InvalidArgument("incarnation", "must not be negative")
        known = max(self.incarnation(domain_id), incarnation)
        current = self._open.get(domain_id)
        if current is None or incarnation <= current.incarnation:
            return known, []
        kind = (
            TransitionKind.RECOVERED
            if current.state is SuspicionState.CONFIRMED_DOWN
            else TransitionKind.REFUTED
        )
        return known, [Transition(kind, current)]

    def apply_report(self, suspicion: Suspicion | None) -> None:
        """Stores the result of `plan_report`."""
        if suspicion is not None:
            self._open[suspicion.suspect_id] = suspicion

    def apply_refute(self, domain_id: str, known: int, transitions: Sequence[Transition]) -> None:
        """Stores the result of `plan_refute`."""
        self._incarnations[domain_id] = known
        if transitions:
            self._open.pop(domain_id, None)

    def report(
        self, report: Report, observers: Sequence[str], quorum: int, now: float
    ) -> tuple[Suspicion | None, list[Transition]]:
        """`plan_report`, applied."""
        suspicion, transitions = self.plan_report(report, observers, quorum, now)
        self.apply_report(suspicion)
        return suspicion, transitions

    def refute(self, domain_id: str, incarnation: int) -> tuple[int, list[Transition]]:
        """`plan_refute`, applied."""
        known, transitions = self.plan_refute(domain_id, incarnation)
        self.apply_refute(domain_id, known, transitions)
        return known, transitions
