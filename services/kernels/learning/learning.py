"""The learning kernel's core: takes outcome batches, finds patterns, shares them.

`ingest` folds a batch into in-memory counters (cheap: no row per outcome is written;
only the batch id, so a batch sent again is counted once). `analyze` runs the detectors
(see `detector`) and stores each pattern found; a new one is then contributed to shared
memory (`failed_patterns`, `optimization` or `insight`, with its evidence; the pattern id
is the request id, so a retry never contributes twice) and announced by an
`insight.<kind>` event, whose data addresses it by the domain's capabilities and the
action, and carries the contribution id a receiving domain reports its application on. The same
transaction enqueues a `learning.pattern_found` entry for the immutable log (the pattern,
its test statistic and the contribution id), so what the system learned, and when, is on
record.
A pattern whose contribution fails (memory down) is retried at the next run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.common.completion import runs_to_completion
from services.common.outbox import Outbox
from services.kernels.learning.detector import (
    Aggregates,
    DetectorSettings,
    Outcome,
    Pattern,
    detect,
)
from services.kernels.learning.store import LearningStore, log_outbox, outbox

log = logging.getLogger(__name__)

SOURCE = "learning"
EVENT_PREFIX = "insight."
LOG_KIND = "learning.pattern_found"
MAX_CAPABILITIES = 32


class Contributor(Protocol):
    """Shared memory, as the learning kernel uses it."""

    async def contribute(
        self,
        contribution_type: str,
        content: Mapping[str, Any],
        tags: Sequence[str],
        request_id: str,
    ) -> str:
        """Contributes; returns the contribution id."""
        ...


@dataclass(frozen=True)
class LearningSettings:
    """How the kernel learns.

    Attributes:
        detector: Thresholds of the tests.
        analyze_interval_s: Time between two detection runs.
        max_actions: (domain, action) pairs tracked at most.
        batch_memory_s: How long a batch id is remembered (duplicates within it count once).
    """

    detector: DetectorSettings = field(default_factory=DetectorSettings)
    analyze_interval_s: float = 30.0
    max_actions: int = 10_000
    batch_memory_s: float = 86_400.0


@dataclass
class Counts:
    """What the kernel has done since start."""

    batches: int = 0
    duplicate_batches: int = 0
    analyses: int = 0


class Learning:
    """Ingests outcomes and turns the patterns in them into shared knowledge.

    Args:
        store: Durable state.
        settings: Thresholds and intervals.
        memory: Shared memory; None contributes nothing (events still go).
        clock: Epoch seconds.
    """

    def __init__(
        self,
        store: LearningStore,
        settings: LearningSettings,
        memory: Contributor | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self.memory = memory
        self.clock = clock
        self.aggregates = Aggregates(settings.max_actions)
        self.capabilities: dict[str, tuple[str, ...]] = {}
        self.events = Outbox(store.db, outbox, SOURCE)
        self.log_entries = Outbox(store.db, log_outbox, SOURCE)
        self.counts = Counts()
        self._on_commit: list[Callable[[], None]] = []
        self._lock = asyncio.Lock()

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Calls `callback` after each transaction that enqueued events."""
        self._on_commit.append(callback)

    async def open(self) -> None:
        """Creates the tables."""
        await self.store.open()

    @runs_to_completion
    async def ingest(
        self,
        domain_id: str,
        batch_id: str,
        outcomes: Sequence[Outcome],
        capabilities: Sequence[str] = (),
    ) -> tuple[int, bool]:
        """Counts a batch of one domain's outcomes; returns (accepted, duplicate).

        Runs to its end even when its caller goes away: once the batch id is stored, a retry
        is a duplicate, so the outcomes must be counted now or never.
        """
        if not await self.store.take_batch(domain_id, batch_id, self.clock()):
            self.counts.duplicate_batches += 1
            return 0, True
        # Bounded like the counters: at most one entry per tracked pair's domain.
        known = domain_id in self.capabilities
        if capabilities and (known or len(self.capabilities) < self.settings.max_actions):
            self.capabilities[domain_id] = tuple(capabilities[:MAX_CAPABILITIES])
        self.counts.batches += 1
        return self.aggregates.add_all(outcomes), False

    async def analyze(self) -> tuple[list[dict[str, Any]], int]:
        """Runs the detectors; returns (the rows of patterns new in this run, patterns found)."""
        async with self._lock:
            found = detect(self.aggregates, self.settings.detector)
            now = self.clock()
            new: list[dict[str, Any]] = []
            async with self.store.db.transaction() as conn:
                known = await self.store.known(conn)
                for pattern in found:
                    record = self._record(pattern)
                    if pattern.id in known:
                        await self.store.refresh(conn, pattern.id, record, pattern.strength, now)
                        continue
                    row: dict[str, Any] = {
                        "pattern_id": pattern.id,
                        "domain_id": pattern.domain,
                        "kind": pattern.kind,
                        "strength": pattern.strength,
                        "record": record,
                        "contribution_id": "",
                        "announced": False,
                        "first_found": now,
                        "last_found": now,
                    }
                    await self.store.insert(conn, row)
                    new.append(row)
            self.counts.analyses += 1
            for pattern in found:
                if any(row["pattern_id"] == pattern.id for row in new):
                    log.info("pattern found: %s", pattern.summary)
            await self.announce()
            return new, len(found)

    def _record(self, pattern: Pattern) -> dict[str, Any]:
        record = pattern.to_json()
        record["capabilities"] = list(self.capabilities.get(pattern.domain, ()))
        return record

    async def announce(self) -> int:
        """Contributes and announces the patterns not yet announced; returns how many went.
        Stops at the first contribution that fails (retried at the next run)."""
        done = 0
        for row in await self.store.unannounced():
            record = dict(row["record"])
            contribution_id = ""
            if self.memory is not None:
                try:
                    contribution_id = await self.memory.contribute(
                        record["contribution_type"],
                        {**record, "source": SOURCE},
                        ["learning", record["kind"], record["domain"], record["action"]],
                        row["pattern_id"],
                    )
                except Exception as exc:
                    log.warning("cannot contribute pattern %s yet: %s", row["pattern_id"], exc)
                    break
            record["contribution_id"] = contribution_id
            async with self.store.db.transaction() as conn:
                await self.store.announced(conn, row["pattern_id"], contribution_id)
                subject = f"{record['domain']}.{record['action']}"
                await self.events.enqueue(
                    conn, EVENT_PREFIX + record["kind"], record, subject=subject
                )
                await self.log_entries.enqueue(conn, LOG_KIND, _log_entry(record), subject=subject)
            done += 1
            for callback in self._on_commit:
                callback()
        return done

    async def forget_old_batches(self) -> int:
        """Forgets batch ids older than the batch memory."""
        return await self.store.forget_batches(self.clock() - self.settings.batch_memory_s)

    async def run(self) -> None:
        """Analyzes at the interval until cancelled."""
        while True:
            await asyncio.sleep(self.settings.analyze_interval_s)
            try:
                await self.analyze()
                await self.forget_old_batches()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("a detection run failed; the next one runs at the interval")

    async def stats(self) -> dict[str, int]:
        """The kernel's counts."""
        return {
            "outcomes": self.aggregates.outcomes,
            "batches": self.counts.batches,
            "duplicate_batches": self.counts.duplicate_batches,
            "dropped": self.aggregates.dropped,
            "actions": len(self.aggregates.actions),
            "patterns": await self.store.count(),
            "analyses": self.counts.analyses,
        }


def _log_entry(record: dict[str, Any]) -> dict[str, Any]:
    """What the immutable log keeps of an announced pattern."""
    evidence = record.get("evidence") or {}
    return {
        "pattern_id": record["id"],
        "domain": record["domain"],
        "action": record["action"],
        "kind": record["kind"],
        "factor": record["factor"],
        "bucket": record["bucket"],
        "summary": record["summary"],
        "test": evidence.get("test", ""),
        "z": evidence.get("z", 0.0),
        "contribution_id": record.get("contribution_id", ""),
    }
