"""The immune core: metrics in, anomalies out, remediations queued and recorded.

`report` scores points synchronously (cheap, in memory) and records each anomaly with its
`anomaly.detected` event in one transaction (transactional outbox). Remediations run one
at a time on a background queue, so a burst of anomalies never runs playbooks in
parallel and ReportMetrics answers without waiting for Guardian. Each finished
remediation is recorded with a `remediation.completed` event.

A report, once begun, ends even when its caller goes away (`runs_to_completion`): scoring
has already moved the series (one that raised an anomaly stays open and raises no other
until it calms down), so an anomaly cut off before its record or its queueing would be
lost, or recorded and never remediated, and the reporter's retry would not raise it again.
The traffic tallies reported with the points are part of the same report: cut between the
two, the retry would score its points a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.common.call_metrics import EdgeTally, TrafficKey
from services.common.completion import runs_to_completion
from services.common.errors import InvalidArgument, NotFound, ResourceExhausted
from services.common.outbox import Outbox
from services.common.pagination import decode_token, encode_token, page_size, take_page
from services.common.validation import require_id
from services.kernels.immune import store as tables
from services.kernels.immune.detector import Detector, DetectorSettings
from services.kernels.immune.model import Anomaly, MetricPoint, Outcome, PlaybookScore, Remediation
from services.kernels.immune.playbooks import candidates_for
from services.kernels.immune.remediation import Remediator
from services.kernels.immune.store import ImmuneStore
from services.kernels.immune.telemetry import TelemetrySettings
from services.kernels.immune.traffic import TrafficRecord, check_traffic

log = logging.getLogger(__name__)

MAX_POINTS_PER_REPORT = 1000
QUEUE_LIMIT = 1000


@dataclass(frozen=True)
class Baseline:
    """The state of one series, for GetBaseline."""

    component: str
    metric: str
    points: int
    median: float
    mad: float
    warmed_up: bool
    in_anomaly: bool
    consecutive: int


@dataclass(frozen=True)
class Stats:
    """Counts for GetImmuneStats."""

    series: int
    points: int
    anomalies_by_kind: dict[str, int]
    remediations_by_outcome: dict[str, int]
    playbooks: list[tuple[str, PlaybookScore]]
    dry_run: bool


class Immune:
    """Detection, the anomaly record and the remediation queue.

    Args:
        store: Durable state.
        detector: Detection settings.
        remediator: Runs remediations; None only detects.
        clock: Epoch seconds.
        telemetry: How the traffic behind the unified telemetry is kept.
    """

    def __init__(
        self,
        store: ImmuneStore,
        detector: DetectorSettings,
        remediator: Remediator | None,
        clock: Callable[[], float] = time.time,
        telemetry: TelemetrySettings | None = None,
    ) -> None:
        self.store = store
        self.detector = Detector(detector)
        self.remediator = remediator
        self.clock = clock
        self.events = Outbox(store.db, tables.outbox, "immune")
        self._queue: asyncio.Queue[Anomaly] = asyncio.Queue(QUEUE_LIMIT)
        self._on_commit: list[Callable[[], None]] = []
        self._busy = 0
        self.traffic = TrafficRecord(
            store, telemetry or TelemetrySettings(), self.open_anomalies, clock
        )

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Calls `callback` after every commit that enqueued events."""
        self._on_commit.append(callback)

    def _committed(self) -> None:
        for callback in self._on_commit:
            callback()

    async def open(self) -> None:
        """Opens the store and resumes cooldowns and the rate limit."""
        await self.store.open()
        await self.traffic.open()
        if self.remediator is not None:
            settings = self.remediator.settings
            horizon = max(settings.cooldown_s, settings.rate_window_s)
            self.remediator.restore(await self.store.last_actions(self.clock() - horizon))

    @runs_to_completion
    async def report(
        self,
        points: Sequence[MetricPoint],
        traffic: Sequence[tuple[TrafficKey, EdgeTally]] = (),
    ) -> list[Anomaly]:
        """Scores points; records, announces and queues the anomalies they raise; adds the
        reporter's traffic tallies to the record. The whole report is checked before any of
        it is taken: an invalid point or tally refuses all of it."""
        if len(points) > MAX_POINTS_PER_REPORT:
            raise InvalidArgument("points", f"must have at most {MAX_POINTS_PER_REPORT} entries")
        for i, p in enumerate(points):
            require_id(f"points[{i}].component", p.component)
            require_id(f"points[{i}].metric", p.metric)
            if not math.isfinite(p.value):
                raise InvalidArgument(f"points[{i}].value", "must be finite")
        check_traffic(traffic)
        raised = self._score(points)
        if raised:
            await self._record(raised)
        if traffic:
            await self.traffic.report(traffic)
        return raised

    def _score(self, points: Sequence[MetricPoint]) -> list[Anomaly]:
        """Moves each point's series; the anomalies the points raise."""
        raised: list[Anomaly] = []
        for p in points:
            try:
                detection = self.detector.observe(p.component, p.metric, p.value, p.time)
            except OverflowError as exc:
                raise ResourceExhausted(str(exc), reason="TOO_MANY_SERIES") from None
            if detection is None:
                continue
            raised.append(
                Anomaly(
                    anomaly_id=str(uuid.uuid4()),
                    component=p.component,
                    metric=p.metric,
                    kind=detection.kind,
                    median=detection.median,
                    mad=detection.mad,
                    threshold=self.detector.settings.threshold,
                    evidence=detection.evidence,
                    detected_at=self.clock(),
                )
            )
        return raised

    async def _record(self, raised: list[Anomaly]) -> None:
        """Stores, announces and queues for remediation the anomalies a report raised."""
        async with self.store.db.transaction() as conn:
            for anomaly in raised:
                await self.store.add_anomaly(conn, anomaly)
                await self.events.enqueue(
                    conn, "anomaly.detected", anomaly.to_json(), subject=anomaly.component
                )
        self._committed()
        for anomaly in raised:
            log.warning(
                "immune: %s on %s (median %.3g, last %.3g)",
                anomaly.kind,
                anomaly.component,
                anomaly.median,
                anomaly.evidence[-1].value,
            )
            if self.remediator is not None:
                try:
                    self._queue.put_nowait(anomaly)
                except asyncio.QueueFull:
                    log.error(
                        "immune: remediation queue full; %s not remediated", anomaly.anomaly_id
                    )

    async def run(self) -> None:
        """Remediates queued anomalies one at a time, forever; cancel to stop."""
        while True:
            anomaly = await self._queue.get()
            self._busy += 1
            try:
                await self._remediate(anomaly)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("immune: remediation of %s failed", anomaly.anomaly_id)
            finally:
                self._busy -= 1
                self._queue.task_done()

    async def _remediate(self, anomaly: Anomaly) -> Remediation:
        assert self.remediator is not None
        rid = str(uuid.uuid4())
        running = Remediation(
            rid,
            anomaly.anomaly_id,
            anomaly.component,
            anomaly.kind,
            Outcome.RUNNING,
            "",
            self.clock(),
        )
        async with self.store.db.transaction() as conn:
            await self.store.save_remediation(conn, running, created=True)
            await self.store.link_remediation(conn, anomaly, rid)
        done = await self.remediator.remediate(anomaly, rid)
        async with self.store.db.transaction() as conn:
            await self.store.save_remediation(conn, done, created=False)
            await self.events.enqueue(
                conn, "remediation.completed", done.to_json(), subject=done.component
            )
        self._committed()
        return done

    async def idle(self) -> None:
        """Waits until every queued remediation has finished."""
        await self._queue.join()

    def metrics_from_event(
        self, event_type: str, data: Mapping[str, Any], when: float
    ) -> list[MetricPoint]:
        """Metric points carried by a bus event: `{component, metric, value}`,
        `{component, metrics: {name: value}}`, or a call report
        `{component | domain_id, latency_ms, error}` (error counts as 1 or 0 in `errors`)."""
        component = str(data.get("component") or data.get("domain_id") or "")
        points: list[MetricPoint] = []
        if not component:
            return points
        if "metric" in data and _number(data.get("value")):
            points.append(MetricPoint(component, str(data["metric"]), float(data["value"]), when))
        metrics = data.get("metrics")
        if isinstance(metrics, Mapping):
            points.extend(
                MetricPoint(component, str(k), float(v), when)
                for k, v in metrics.items()
                if _number(v)
            )
        if _number(data.get("latency_ms")):
            points.append(MetricPoint(component, "latency_ms", float(data["latency_ms"]), when))
            if "error" in data:
                points.append(MetricPoint(component, "errors", 1.0 if data["error"] else 0.0, when))
        return points

    async def get_anomaly(self, anomaly_id: str) -> tuple[Anomaly, Remediation | None]:
        """One anomaly and its remediation."""
        require_id("anomaly_id", anomaly_id)
        anomaly = await self.store.get_anomaly(anomaly_id)
        if anomaly is None:
            raise NotFound("anomaly", anomaly_id)
        remediation = (
            await self.store.get_remediation(anomaly.remediation_id)
            if anomaly.remediation_id
            else None
        )
        return anomaly, remediation

    async def list_anomalies(
        self,
        component: str = "",
        kind: str = "",
        size: int = 0,
        token: str = "",
        size_of: Callable[[Anomaly], int] = lambda _: 0,
    ) -> tuple[list[Anomaly], str]:
        """One page of anomalies, newest first (`size_of`: see `list_remediations`)."""
        limit, before = _page(size, token)
        rows = await self.store.list_anomalies(component, kind, before, limit + 1)
        page, more = take_page(rows, limit, lambda row: size_of(row[1]))
        next_token = encode_token({"before": page[-1][0]}) if more else ""
        return [a for _, a in page], next_token

    async def list_remediations(
        self,
        component: str = "",
        size: int = 0,
        token: str = "",
        size_of: Callable[[Remediation], int] = lambda _: 0,
    ) -> tuple[list[Remediation], str]:
        """One page of remediations, newest first.

        `size_of` tells an item's encoded size in the reply; the page ends early rather than
        exceed `pagination.MAX_PAGE_BYTES`.
        """
        limit, before = _page(size, token)
        rows = await self.store.list_remediations(component, before, limit + 1)
        page, more = take_page(rows, limit, lambda row: size_of(row[1]))
        next_token = encode_token({"before": page[-1][0]}) if more else ""
        return [r for _, r in page], next_token

    def baseline(self, component: str, metric: str) -> Baseline:
        """The state of one series."""
        series = self.detector.series.get((component, metric))
        if series is None:
            raise NotFound("series", f"{component}/{metric}")
        warmed = len(series.values) >= self.detector.settings.min_points
        median, mad = series.baseline() if series.values else (0.0, 0.0)
        return Baseline(
            component,
            metric,
            len(series.values),
            median,
            mad,
            warmed,
            series.open,
            len(series.run),
        )

    def open_anomalies(self) -> dict[str, list[str]]:
        """Per component, the metrics of its series in anomaly now."""
        found: dict[str, list[str]] = {}
        for (component, metric), series in self.detector.series.items():
            if series.open:
                found.setdefault(component, []).append(metric)
        return found

    async def stats(self) -> Stats:
        """Counts for GetImmuneStats; playbook records come from experience (shared memory
        when reachable) for every kind seen."""
        by_kind = await self.store.anomaly_counts()
        playbooks: list[tuple[str, PlaybookScore]] = []
        local = await self.store.outcomes()
        if self.remediator is not None:
            for kind in sorted(set(by_kind) | {k for k, _ in local}):
                names = candidates_for(kind, self.remediator.settings.playbooks)
                known = await self.remediator.experience.outcomes(kind, names)
                playbooks.extend((kind, known[n]) for n in names if n in known)
        return Stats(
            series=len(self.detector.series),
            points=self.detector.points,
            anomalies_by_kind=by_kind,
            remediations_by_outcome=await self.store.remediation_counts(),
            playbooks=playbooks,
            dry_run=bool(self.remediator and self.remediator.settings.dry_run),
        )

    async def close(self) -> None:
        """Nothing to flush: every record is written as it happens."""
        with contextlib.suppress(Exception):
            while not self._queue.empty():
                self._queue.get_nowait()
                self._queue.task_done()


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _page(size: int, token: str) -> tuple[int, int | None]:
    limit = page_size(size)
    position = decode_token(token)
    before = position.get("before") if position else None
    if before is not None and not isinstance(before, int):
        raise InvalidArgument("page_token", "is not a token this service issued")
    return limit, before
