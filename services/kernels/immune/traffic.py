"""The immune kernel's record of traffic: reports in, windows out, slots kept durably.

`report` validates a reporter's tallies, adds them to the in-memory `TrafficWindow` and
writes the slot rows they changed, under one lock: the kernel is the only writer of its
traffic table, so totals are merged in memory and written whole instead of
read-modified-written in the database. At start-up the slots of the retention are loaded
back, so the figures survive a restart. Queries are answered from memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from services.common.call_metrics import MAX_TRAFFIC_PER_REPORT, EdgeTally, TrafficKey, TrafficKind
from services.common.completion import runs_to_completion
from services.common.errors import InvalidArgument
from services.common.latency_histogram import LatencyHistogram
from services.kernels.immune.slots import TrafficWindow
from services.kernels.immune.store import ImmuneStore
from services.kernels.immune.telemetry import Graph, Telemetry, TelemetrySettings, graph, summarize

log = logging.getLogger(__name__)

MAX_NAME = 256


class TrafficRecord:
    """Traffic reports, their durable slots and the windows computed from them.

    Args:
        store: Where slots are kept.
        settings: Slot width, retention and limits.
        open_anomalies: Per component, its series in anomaly now (for health).
        clock: Epoch seconds.
    """

    def __init__(
        self,
        store: ImmuneStore,
        settings: TelemetrySettings,
        open_anomalies: Callable[[], Mapping[str, Sequence[str]]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self.window = TrafficWindow(settings)
        self._open_anomalies = open_anomalies
        self._clock = clock
        self._lock = asyncio.Lock()
        self._pruned_before = 0.0
        self.reports = 0

    async def open(self) -> None:
        """Loads the slots of the retention back into memory."""
        cutoff = self.window.prune(self._clock())
        for start, key, tally in await self.store.load_traffic(cutoff):
            self.window.load(start, key, tally)

    @runs_to_completion
    async def report(self, traffic: Sequence[tuple[TrafficKey, EdgeTally]]) -> int:
        """Adds one reporter's tallies; returns how many were taken.

        Runs to its end even when its caller goes away: the window in memory and the slot
        rows written move together, or a restart would lose what memory had counted."""
        check_traffic(traffic)
        if not traffic:
            return 0
        report: dict[TrafficKey, EdgeTally] = {}
        for key, tally in traffic:
            previous = report.get(key)
            if previous is None:
                report[key] = tally
            else:
                previous.errors += tally.errors
                previous.latency.merge(tally.latency)
        async with self._lock:
            now = self._clock()
            start, touched = self.window.add(report, now)
            await self.store.save_traffic(start, touched)
            cutoff = self.window.prune(now)
            if cutoff > self._pruned_before:
                await self.store.prune_traffic(cutoff)
                self._pruned_before = cutoff
            self.reports += 1
        return len(traffic)

    def _window_s(self, seconds: float) -> float:
        if seconds == 0:
            return self.settings.default_window_s
        if seconds < 0 or seconds > self.settings.retention_s:
            raise InvalidArgument(
                "window_seconds",
                f"must be between 1 and {self.settings.retention_s:g} (the retention), "
                "or 0 for the default",
            )
        return seconds

    def telemetry(self, window_s: float) -> Telemetry:
        """The cross-domain figures of the last `window_s` seconds (0: the default)."""
        now = self._clock()
        start, traffic = self.window.window(self._window_s(window_s), now)
        return summarize(traffic, self._open_anomalies(), start, now)

    def graph(self, window_s: float, kind: TrafficKind | None = None) -> Graph:
        """The collaboration graph of the last `window_s` seconds (0: the default)."""
        now = self._clock()
        start, traffic = self.window.window(self._window_s(window_s), now)
        return graph(traffic, start, now, kind)


def check_traffic(traffic: Sequence[tuple[TrafficKey, EdgeTally]]) -> None:
    """Raises InvalidArgument, naming the field, for a report's tallies that cannot be taken."""
    if len(traffic) > MAX_TRAFFIC_PER_REPORT:
        raise InvalidArgument("traffic", f"must have at most {MAX_TRAFFIC_PER_REPORT} entries")
    for i, ((_, source, target), tally) in enumerate(traffic):
        _check(i, source, target, tally)


def _check(i: int, source: str, target: str, tally: EdgeTally) -> None:
    where = f"traffic[{i}]"
    if len(source) > MAX_NAME:
        raise InvalidArgument(f"{where}.source", f"must have at most {MAX_NAME} characters")
    if not target or len(target) > MAX_NAME:
        raise InvalidArgument(f"{where}.target", f"must have 1 to {MAX_NAME} characters")
    if tally.errors < 0 or tally.errors > tally.count:
        raise InvalidArgument(f"{where}.errors", "must be between 0 and the count")


def traffic_kind(field: str, value: int) -> TrafficKind:
    """The kind a wire value names; raises InvalidArgument for one that is not a kind."""
    try:
        return TrafficKind(value)
    except ValueError:
        raise InvalidArgument(field, "must be a TrafficKind other than UNSPECIFIED") from None


def traffic_key(i: int, kind: int, source: str, target: str) -> TrafficKey:
    """The key of a reported tally."""
    return traffic_kind(f"traffic[{i}].kind", kind), source, target


def tally_of(i: int, counts: Sequence[int], sum_ms: float, max_ms: float, errors: int) -> EdgeTally:
    """An edge tally from its wire parts; raises InvalidArgument naming what is wrong."""
    try:
        latency = LatencyHistogram.of(counts, sum_ms, max_ms)
    except ValueError as exc:
        raise InvalidArgument(f"traffic[{i}].latency", str(exc)) from None
    return EdgeTally(errors, latency)
