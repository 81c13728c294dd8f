"""The registry's side of the health federation: suspicions reported by peers, the quorum,
and the events that announce each step.

Members (domains registered with `federation=v1` metadata, whatever their lease status)
watch each other on the ring of `services.common.observers`. The registry is not a
watcher: it only records what observers report (`SuspicionBook`), checks the quorum over
the suspect's observers as it computes them from its own membership, and publishes every
transition through its outbox in the transaction that changes the book, so an event is
never lost and never announces a change that did not happen. The book lives in the
registry's database (`suspicion_store.py`): reports reaching different instances count
toward one quorum, and a restart forgets nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.errors import InvalidArgument
from services.common.observers import (
    DEFAULT_OBSERVERS,
    MEMBER_METADATA_KEY,
    MIN_QUORUM,
    observers_of,
    quorum,
)
from services.common.outbox import Outbox
from services.common.pagination import decode_token, encode_token, page_size
from services.common.validation import require_id
from services.registry.registry import Registry
from services.registry.suspicion_store import SuspicionStore
from services.registry.suspicions import Report, Suspicion, Transition, TransitionKind


@dataclass(frozen=True)
class FederationSettings:
    """Tunables of the quorum.

    Attributes:
        observers: Observers per member (the `k` of the ring); members use the same value.
        quorum: Confirmations needed; 0 means a majority of the suspect's observers.
        min_quorum: Never fewer confirmations than this (2: one observer never decides).
    """

    observers: int = DEFAULT_OBSERVERS
    quorum: int = 0
    min_quorum: int = MIN_QUORUM


@dataclass(frozen=True)
class RefuteOutcome:
    """What a refutation did."""

    cleared: bool
    recovered: bool
    incarnation: int


class Federation:
    """Suspicions and their quorum, over the registry's membership.

    Args:
        registry: The registry core (membership and domain lookups).
        outbox: The registry's outbox; events are written there.
        settings: Quorum tunables.
        wake: Called after events were written (wakes the outbox relay).
        clock: Epoch seconds; injectable for tests.
    """

    def __init__(
        self,
        registry: Registry,
        outbox: Outbox,
        settings: FederationSettings | None = None,
        wake: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.outbox = outbox
        self.settings = settings or FederationSettings()
        self.suspicions = SuspicionStore(outbox.db)
        self._wake = wake
        self._clock = clock
        self._lock = asyncio.Lock()

    def members(self) -> list[str]:
        """Ids of the registered federation members."""
        ids: list[str] = []
        token = ""
        while True:
            records, token, _ = self.registry.list_domains(size=1000, token=token)
            ids.extend(r.domain_id for r in records if r.metadata.get(MEMBER_METADATA_KEY))
            if not token:
                return ids

    def observers(self, suspect_id: str) -> list[str]:
        """The suspect's assigned observers in the registry's current view."""
        members = set(self.members()) | {suspect_id}
        return observers_of(suspect_id, members, self.settings.observers)

    def quorum_for(self, observers: int) -> int:
        """Confirmations needed for a suspect with that many observers."""
        return quorum(observers, minimum=self.settings.min_quorum, fixed=self.settings.quorum)

    async def report(self, report: Report) -> tuple[Suspicion | None, int]:
        """Records one observer's report; returns the suspicion (None when stale) and the
        highest incarnation of the suspect known."""
        require_id("observer_id", report.observer_id)
        require_id("suspect_id", report.suspect_id)
        if report.observer_id == report.suspect_id:
            raise InvalidArgument("observer_id", "must differ from suspect_id")
        await self.registry.lookup(report.observer_id)  # NotFound for an unknown observer
        await self.registry.lookup(report.suspect_id)
        async with self._lock, self.suspicions.editing(report.suspect_id) as edit:
            observers = self.observers(report.suspect_id)
            suspicion, transitions = edit.book.plan_report(
                report, observers, self.quorum_for(len(observers)), self._clock()
            )
            await self._announce(edit.conn, transitions)
            edit.book.apply_report(suspicion)
            known = edit.book.incarnation(report.suspect_id)
        if transitions:
            self._wake()
        return suspicion, known

    async def refute(self, domain_id: str, incarnation: int) -> RefuteOutcome:
        """The domain itself says it is alive at `incarnation`."""
        require_id("domain_id", domain_id)
        await self.registry.lookup(domain_id)
        async with self._lock, self.suspicions.editing(domain_id) as edit:
            known, transitions = edit.book.plan_refute(domain_id, incarnation)
            await self._announce(edit.conn, transitions)
            edit.book.apply_refute(domain_id, known, transitions)
        if transitions:
            self._wake()
        recovered = any(t.kind is TransitionKind.RECOVERED for t in transitions)
        return RefuteOutcome(bool(transitions), recovered, known)

    async def suspicion(self, suspect_id: str) -> Suspicion | None:
        """The open suspicion of `suspect_id`, or None."""
        return await self.suspicions.get(suspect_id)

    async def page(self, size: int = 0, token: str = "") -> tuple[list[Suspicion], str]:
        """A page of open suspicions by suspect id, and the next page's token."""
        limit = page_size(size)
        position = decode_token(token)
        after = str(position.get("after", "")) if position else ""
        rest = await self.suspicions.page(after, limit + 1)
        page = rest[:limit]
        more = len(rest) > limit
        return page, encode_token({"after": page[-1].suspect_id}) if more and page else ""

    async def _announce(self, conn: AsyncConnection, transitions: list[Transition]) -> None:
        for transition in transitions:
            await self.outbox.enqueue(
                conn,
                transition.kind.value,
                transition.suspicion.event_data(),
                subject=transition.suspicion.suspect_id,
            )
