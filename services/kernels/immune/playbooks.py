"""Which playbooks may answer an anomaly kind, and how the best one is chosen.

Candidates come from configuration: `kind pattern -> playbooks`, first matching pattern
wins ('*' patterns as everywhere in Grace), default `* -> restart_component, rebind_port,
diagnose_network`. A playbook named `workflow:<id>` runs a workflow instead of a Guardian
playbook. Each candidate is scored by its recorded outcomes for the kind with the
Beta(1, 1) posterior mean (s + 1) / (s + f + 2): an untried playbook scores 0.5, so after
a playbook fails more often than it succeeds an untried one gets its chance, and the
best-proven one is chosen once evidence accumulates. Ties keep the configured order.

Outcomes are kept in shared memory (`Experience`), so every immune instance, and anyone
reading memory, learns from them; a local copy answers while memory is unreachable.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

from services.common.patterns import matches
from services.kernels.immune.model import PlaybookScore
from services.kernels.immune.store import ImmuneStore

log = logging.getLogger(__name__)

DEFAULT_PLAYBOOKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("*", ("restart_component", "rebind_port", "diagnose_network")),
)


def parse_playbooks(text: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """`latency_ms_spike=restart_component|rebind_port;*=restart_component` as rules;
    ValueError on a malformed entry."""
    rules: list[tuple[str, tuple[str, ...]]] = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        pattern, sep, names = item.partition("=")
        books = tuple(filter(None, (n.strip() for n in names.split("|"))))
        if not sep or not pattern.strip() or not books:
            raise ValueError(f"{item!r}: expected kind_pattern=playbook|playbook")
        rules.append((pattern.strip(), books))
    return tuple(rules)


def candidates_for(kind: str, rules: Sequence[tuple[str, Sequence[str]]]) -> tuple[str, ...]:
    """The playbooks allowed for an anomaly kind (empty when no rule matches)."""
    for pattern, books in rules:
        if matches(pattern, kind):
            return tuple(books)
    return ()


def rank(
    candidates: Sequence[str], records: Mapping[str, PlaybookScore]
) -> tuple[PlaybookScore, ...]:
    """Candidates best first by score; ties keep the candidates' order."""
    scored = [records.get(name, PlaybookScore(name)) for name in candidates]
    order = {name: i for i, name in enumerate(candidates)}
    return tuple(sorted(scored, key=lambda s: (-s.score, order[s.playbook])))


class Experience(Protocol):
    """Where playbook outcomes are kept and read."""

    async def outcomes(self, kind: str, playbooks: Sequence[str]) -> dict[str, PlaybookScore]:
        """Recorded outcomes of these playbooks for a kind."""

    async def record(self, kind: str, playbook: str, success: bool, detail: str) -> None:
        """Adds one outcome."""


class LocalExperience:
    """Outcomes in the immune kernel's own database.

    Args:
        store: The immune store.
    """

    def __init__(self, store: ImmuneStore) -> None:
        self.store = store

    async def outcomes(self, kind: str, playbooks: Sequence[str]) -> dict[str, PlaybookScore]:
        records = await self.store.outcomes(kind)
        return {p: records[(kind, p)] for p in playbooks if (kind, p) in records}

    async def record(self, kind: str, playbook: str, success: bool, detail: str) -> None:
        await self.store.record_outcome(kind, playbook, success)


class SharedExperience:
    """Outcomes in shared memory first, with the local record as a copy and fallback.

    Args:
        shared: Shared memory (see `peers.MemoryExperience`).
        local: The local record (`LocalExperience`, or another kernel's own).
    """

    def __init__(self, shared: Experience, local: Experience) -> None:
        self.shared = shared
        self.local = local

    async def outcomes(self, kind: str, playbooks: Sequence[str]) -> dict[str, PlaybookScore]:
        try:
            return await self.shared.outcomes(kind, playbooks)
        except Exception as exc:
            log.warning("shared memory unavailable (%s); using local records", exc)
            return await self.local.outcomes(kind, playbooks)

    async def record(self, kind: str, playbook: str, success: bool, detail: str) -> None:
        await self.local.record(kind, playbook, success, detail)
        try:
            await self.shared.record(kind, playbook, success, detail)
        except Exception as exc:
            log.warning(
                "could not record %s/%s in shared memory (%s); kept locally",
                kind,
                playbook,
                exc,
            )
