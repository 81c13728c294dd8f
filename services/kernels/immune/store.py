"""Durable state of the immune kernel: anomalies, remediations, playbook outcomes and the
traffic slots of the unified telemetry."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.call_metrics import EdgeTally, TrafficKey, TrafficKind
from services.common.latency_histogram import LatencyHistogram
from services.common.outbox import outbox_table
from services.common.storage import Database
from services.kernels.immune.model import Anomaly, Outcome, PlaybookScore, Remediation

metadata = MetaData()

anomalies = Table(
    "immune_anomalies",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("anomaly_id", String(64), nullable=False, unique=True),
    Column("component", String(128), nullable=False),
    Column("kind", String(160), nullable=False),
    Column("detected_at", Float, nullable=False),
    Column("record", JSON, nullable=False),
    Index("immune_anomalies_component", "component", "seq"),
)

remediations = Table(
    "immune_remediations",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("remediation_id", String(64), nullable=False, unique=True),
    Column("anomaly_id", String(64), nullable=False),
    Column("component", String(128), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("record", JSON, nullable=False),
    Index("immune_remediations_component", "component", "seq"),
)

playbook_outcomes = Table(
    "immune_playbook_outcomes",
    metadata,
    Column("kind", String(160), primary_key=True),
    Column("playbook", String(128), primary_key=True),
    Column("successes", BigInteger, nullable=False),
    Column("failures", BigInteger, nullable=False),
)

# One row per edge per time slot (see `services.kernels.immune.telemetry`): its size follows
# the number of edges and the retention, not the traffic.
traffic = Table(
    "immune_traffic",
    metadata,
    Column("slot_start", Float, primary_key=True),
    Column("kind", Integer, primary_key=True),
    Column("source", String(256), primary_key=True),
    Column("target", String(256), primary_key=True),
    Column("errors", BigInteger, nullable=False),
    Column("counts", JSON, nullable=False),
    Column("sum_ms", Float, nullable=False),
    Column("max_ms", Float, nullable=False),
)

outbox = outbox_table(metadata, "immune")

# Outcomes after which a component is cooling down: something was (or would have been) done.
ACTED = (Outcome.SUCCEEDED.value, Outcome.FAILED.value, Outcome.DRY_RUN.value)


class ImmuneStore:
    """Reads and writes immune state.

    Args:
        db: The database.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    async def open(self) -> None:
        """Creates the tables if missing."""
        await self.db.create_tables(metadata)

    async def close(self) -> None:
        """Closes the database."""
        await self.db.close()

    async def add_anomaly(self, conn: AsyncConnection, anomaly: Anomaly) -> None:
        """Records an anomaly."""
        await conn.execute(
            anomalies.insert().values(
                anomaly_id=anomaly.anomaly_id,
                component=anomaly.component,
                kind=anomaly.kind,
                detected_at=anomaly.detected_at,
                record=anomaly.to_json(),
            )
        )

    async def link_remediation(
        self, conn: AsyncConnection, anomaly: Anomaly, remediation_id: str
    ) -> None:
        """Notes which remediation answers an anomaly."""
        record = {**anomaly.to_json(), "remediation_id": remediation_id}
        await conn.execute(
            update(anomalies)
            .where(anomalies.c.anomaly_id == anomaly.anomaly_id)
            .values(record=record)
        )

    async def get_anomaly(self, anomaly_id: str) -> Anomaly | None:
        """One anomaly."""
        async with self.db.read() as conn:
            record = await conn.scalar(
                select(anomalies.c.record).where(anomalies.c.anomaly_id == anomaly_id)
            )
        return None if record is None else Anomaly.from_json(record)

    async def list_anomalies(
        self, component: str, kind: str, before: int | None, limit: int
    ) -> list[tuple[int, Anomaly]]:
        """Anomalies newest first, with their sequence numbers."""
        query = select(anomalies.c.seq, anomalies.c.record).order_by(anomalies.c.seq.desc())
        if component:
            query = query.where(anomalies.c.component == component)
        if kind:
            query = query.where(anomalies.c.kind == kind)
        if before is not None:
            query = query.where(anomalies.c.seq < before)
        async with self.db.read() as conn:
            rows = await conn.execute(query.limit(limit))
            return [(int(s), Anomaly.from_json(r)) for s, r in rows]

    async def anomaly_counts(self) -> dict[str, int]:
        """Anomalies by kind."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(anomalies.c.kind, func.count()).group_by(anomalies.c.kind)
            )
            return {str(k): int(n) for k, n in rows}

    async def save_remediation(
        self, conn: AsyncConnection, remediation: Remediation, *, created: bool
    ) -> None:
        """Records a remediation or its new state."""
        values = {
            "outcome": remediation.outcome.value,
            "record": remediation.to_json(),
        }
        if created:
            await conn.execute(
                remediations.insert().values(
                    remediation_id=remediation.remediation_id,
                    anomaly_id=remediation.anomaly_id,
                    component=remediation.component,
                    started_at=remediation.started_at,
                    **values,
                )
            )
        else:
            await conn.execute(
                update(remediations)
                .where(remediations.c.remediation_id == remediation.remediation_id)
                .values(**values)
            )

    async def get_remediation(self, remediation_id: str) -> Remediation | None:
        """One remediation."""
        async with self.db.read() as conn:
            record = await conn.scalar(
                select(remediations.c.record).where(remediations.c.remediation_id == remediation_id)
            )
        return None if record is None else Remediation.from_json(record)

    async def list_remediations(
        self, component: str, before: int | None, limit: int
    ) -> list[tuple[int, Remediation]]:
        """Remediations newest first, with their sequence numbers."""
        query = select(remediations.c.seq, remediations.c.record).order_by(
            remediations.c.seq.desc()
        )
        if component:
            query = query.where(remediations.c.component == component)
        if before is not None:
            query = query.where(remediations.c.seq < before)
        async with self.db.read() as conn:
            rows = await conn.execute(query.limit(limit))
            return [(int(s), Remediation.from_json(r)) for s, r in rows]

    async def remediation_counts(self) -> dict[str, int]:
        """Remediations by outcome."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(remediations.c.outcome, func.count()).group_by(remediations.c.outcome)
            )
            return {str(k): int(n) for k, n in rows}

    async def last_actions(self, since: float) -> list[tuple[str, float]]:
        """(component, started_at) of remediations that acted since `since`, oldest first:
        what cooldowns and the rate limit resume from after a restart."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(remediations.c.component, remediations.c.started_at)
                .where(
                    remediations.c.started_at >= since,
                    remediations.c.outcome.in_(ACTED),
                )
                .order_by(remediations.c.started_at)
            )
            return [(str(c), float(t)) for c, t in rows]

    async def record_outcome(self, kind: str, playbook: str, success: bool) -> None:
        """Adds one success or failure to a playbook's local record for a kind."""
        async with self.db.transaction() as conn:
            stmt = self.db.insert(playbook_outcomes).values(
                kind=kind, playbook=playbook, successes=int(success), failures=int(not success)
            )
            column = "successes" if success else "failures"
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["kind", "playbook"],
                    set_={column: getattr(playbook_outcomes.c, column) + 1},
                )
            )

    async def outcomes(self, kind: str = "") -> dict[tuple[str, str], PlaybookScore]:
        """Local playbook records, for one kind or all, keyed by (kind, playbook)."""
        query = select(playbook_outcomes)
        if kind:
            query = query.where(playbook_outcomes.c.kind == kind)
        async with self.db.read() as conn:
            rows = await conn.execute(query)
            return {
                (r.kind, r.playbook): PlaybookScore(r.playbook, int(r.successes), int(r.failures))
                for r in rows
            }

    async def save_traffic(self, slot_start: float, tallies: dict[TrafficKey, EdgeTally]) -> None:
        """Writes the totals of some edges of one slot (replacing what was there), in one
        statement executed for all of them."""
        if not tallies:
            return
        rows = [
            {
                "slot_start": slot_start,
                "kind": kind.value,
                "source": source,
                "target": target,
                "errors": tally.errors,
                "counts": list(tally.latency.counts),
                "sum_ms": tally.latency.sum_ms,
                "max_ms": tally.latency.max_ms,
            }
            for (kind, source, target), tally in tallies.items()
        ]
        stmt = self.db.insert(traffic)
        stmt = stmt.on_conflict_do_update(
            index_elements=["slot_start", "kind", "source", "target"],
            set_={c: stmt.excluded[c] for c in ("errors", "counts", "sum_ms", "max_ms")},
        )
        async with self.db.transaction() as conn:
            await conn.execute(stmt, rows)

    async def load_traffic(self, since: float) -> list[tuple[float, TrafficKey, EdgeTally]]:
        """Every stored edge of the slots from `since` on, slot after slot (the primary
        key's order: the window fills each slot at once)."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(traffic).where(traffic.c.slot_start >= since).order_by(traffic.c.slot_start)
            )
            return [
                (
                    float(r.slot_start),
                    (TrafficKind(r.kind), str(r.source), str(r.target)),
                    EdgeTally(
                        int(r.errors),
                        LatencyHistogram(list(r.counts), float(r.sum_ms), float(r.max_ms)),
                    ),
                )
                for r in rows
            ]

    async def prune_traffic(self, before: float) -> None:
        """Deletes the slots older than `before`."""
        async with self.db.transaction() as conn:
            await conn.execute(delete(traffic).where(traffic.c.slot_start < before))
