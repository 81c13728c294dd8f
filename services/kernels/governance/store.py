"""Durable state of governance: policies and their versions, decisions, approvals, mode."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
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

from services.common.outbox import outbox_table
from services.common.storage import Database, RowInsert, SqliteWriter
from services.kernels.governance.model import (
    Approval,
    ApprovalStatus,
    Decision,
    Policy,
    Request,
    RiskLevel,
    Verdict,
)
from services.kernels.governance.policy_codec import policy_from_json

metadata = MetaData()

policies = Table(
    "governance_policies",
    metadata,
    Column("policy_id", String(128), primary_key=True),
    Column("body", JSON, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

policy_versions = Table(
    "governance_policy_versions",
    metadata,
    Column("policy_id", String(128), primary_key=True),
    Column("version", BigInteger, primary_key=True, autoincrement=False),
    Column("body", JSON, nullable=False),
    Column("written_at", Float, nullable=False),
    Column("deleted", Boolean, nullable=False),
)

decisions = Table(
    "governance_decisions",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("decision_id", String(64), nullable=False, unique=True),
    # SHA-256 of actor and request id; NULL when the client sent none (NULLs never collide).
    Column("request_key", String(64), nullable=True, unique=True),
    Column("actor", String(256), nullable=False),
    Column("action", String(512), nullable=False),
    Column("verdict", String(24), nullable=False),
    Column("evaluated_verdict", String(24), nullable=False),
    Column("time", Float, nullable=False),
    Column("record", JSON, nullable=False),
    Index("governance_decisions_actor", "actor", "seq"),
    Index("governance_decisions_time", "time"),
)

decision_policies = Table(
    "governance_decision_policies",
    metadata,
    Column("decision_id", String(64), primary_key=True),
    Column("policy_id", String(128), primary_key=True),
    Index("governance_decision_policies_policy", "policy_id"),
)

approvals = Table(
    "governance_approvals",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("approval_id", String(64), nullable=False, unique=True),
    Column("decision_id", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("record", JSON, nullable=False),
    Index("governance_approvals_status", "status", "seq"),
)

# One row per redeemed decision: the primary key makes a second redemption fail.
redemptions = Table(
    "governance_redemptions",
    metadata,
    Column("decision_id", String(64), primary_key=True),
    Column("redeemed_at", Float, nullable=False),
    Column("request_sha256", String(64), nullable=False),
)

settings = Table(
    "governance_settings",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", String(256), nullable=False),
)

events_outbox = outbox_table(metadata, "governance")
log_outbox = outbox_table(metadata, "governance_log")


def _request_json(request: Request) -> dict[str, Any]:
    return {
        "actor": request.actor,
        "action": request.action,
        "resource": request.resource,
        "risk_level": request.risk_level.label,
        "context": dict(request.context),
    }


def approval_to_json(approval: Approval) -> dict[str, Any]:
    """The JSON form of an approval, for storage and events."""
    return {
        "approval_id": approval.approval_id,
        "decision_id": approval.decision_id,
        "request": _request_json(approval.request),
        "policy_ids": list(approval.policy_ids),
        "reasons": list(approval.reasons),
        "status": approval.status.value,
        "created_at": approval.created_at,
        "expires_at": approval.expires_at,
        "decided_by": approval.decided_by,
        "decision_reason": approval.decision_reason,
        "decided_at": approval.decided_at,
    }


def approval_from_json(data: dict[str, Any]) -> Approval:
    """The inverse of `approval_to_json`."""
    req = data["request"]
    return Approval(
        approval_id=data["approval_id"],
        decision_id=data["decision_id"],
        request=Request(
            actor=req["actor"],
            action=req["action"],
            resource=req["resource"],
            risk_level=RiskLevel.parse(req["risk_level"]),
            context=dict(req["context"]),
        ),
        policy_ids=tuple(data["policy_ids"]),
        reasons=tuple(data["reasons"]),
        status=ApprovalStatus(data["status"]),
        created_at=data["created_at"],
        expires_at=data["expires_at"],
        decided_by=data["decided_by"],
        decision_reason=data["decision_reason"],
        decided_at=data["decided_at"],
    )


def _policy(row: Any) -> Policy:
    m = row._mapping
    return policy_from_json(
        m["body"], version=m["version"], created_at=m["created_at"], updated_at=m["updated_at"]
    )


@dataclass(frozen=True)
class DecisionFilter:
    """Filters of ListDecisions; empty values match everything."""

    actor: str = ""
    action_like: str = ""
    verdict: Verdict | None = None
    policy_id: str = ""
    since: float = 0.0
    until: float = 0.0


def request_key(actor: str, request_id: str) -> str:
    """The unique key of a client's request id: ids are per actor."""
    return hashlib.sha256(f"{actor}\n{request_id}".encode()).hexdigest()


def like_pattern(pattern: str) -> str:
    """A SQL LIKE pattern (escape '\\') equivalent to a '*' pattern."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


class GovernanceStore:
    """Reads and writes governance state; each write is one transaction.

    Args:
        db: The database.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        # On SQLite decisions are recorded through the writer (SqliteWriter.commit, see the
        # recorder); PostgreSQL uses the engine.
        self.writer: SqliteWriter | None = db.sqlite_writer("governance-writer")
        self._decisions_sqlite = RowInsert(decisions.name, _DECISION_COLUMNS)
        self._links_sqlite = RowInsert(decision_policies.name, _LINK_COLUMNS)
        self._approvals_sqlite = RowInsert(approvals.name, _APPROVAL_COLUMNS)

    async def open(self) -> None:
        """Creates the tables if missing."""
        await self.db.create_tables(metadata)

    async def close(self) -> None:
        """Closes the database."""
        if self.writer is not None:
            await self.writer.close()
        await self.db.close()

    # Policies -------------------------------------------------------------------------

    async def load_policies(self) -> list[Policy]:
        """Every current policy."""
        async with self.db.read() as conn:
            rows = await conn.execute(select(policies).order_by(policies.c.policy_id))
            return [_policy(r) for r in rows]

    async def get_policy(self, conn: AsyncConnection, policy_id: str) -> Policy | None:
        """The current version of a policy, inside a transaction."""
        row = (
            await conn.execute(select(policies).where(policies.c.policy_id == policy_id))
        ).first()
        return None if row is None else _policy(row)

    async def write_policy(self, conn: AsyncConnection, policy: Policy, *, created: bool) -> None:
        """Stores a new version of a policy and keeps it in the history."""
        body = policy.body()
        if created:
            await conn.execute(
                policies.insert().values(
                    policy_id=policy.policy_id,
                    body=body,
                    version=policy.version,
                    created_at=policy.created_at,
                    updated_at=policy.updated_at,
                )
            )
        else:
            await conn.execute(
                update(policies)
                .where(policies.c.policy_id == policy.policy_id)
                .values(body=body, version=policy.version, updated_at=policy.updated_at)
            )
        await self._history(conn, policy.policy_id, policy.version, body, policy.updated_at, False)

    async def delete_policy(self, conn: AsyncConnection, policy: Policy, now: float) -> None:
        """Removes a policy; the history keeps a tombstone version."""
        await conn.execute(delete(policies).where(policies.c.policy_id == policy.policy_id))
        await self._history(conn, policy.policy_id, policy.version + 1, policy.body(), now, True)

    async def _history(
        self,
        conn: AsyncConnection,
        policy_id: str,
        version: int,
        body: dict[str, Any],
        now: float,
        deleted: bool,
    ) -> None:
        # A policy re-created after a delete continues its version numbers in the
        # history, so (policy_id, version) names one body for ever.
        stmt = self.db.insert(policy_versions).values(
            policy_id=policy_id, version=version, body=body, written_at=now, deleted=deleted
        )
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["policy_id", "version"],
                set_={"body": body, "written_at": now, "deleted": deleted},
            )
        )

    async def last_version(self, conn: AsyncConnection, policy_id: str) -> int:
        """Highest version ever written for a policy id (0 if none)."""
        value = await conn.scalar(
            select(func.max(policy_versions.c.version)).where(
                policy_versions.c.policy_id == policy_id
            )
        )
        return int(value or 0)

    async def policy_version(self, policy_id: str, version: int) -> Policy | None:
        """One historical version of a policy."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(policy_versions).where(
                        policy_versions.c.policy_id == policy_id,
                        policy_versions.c.version == version,
                    )
                )
            ).first()
        if row is None:
            return None
        m = row._mapping
        return policy_from_json(m["body"], version=m["version"], updated_at=m["written_at"])

    # Decisions ------------------------------------------------------------------------

    async def decision_by_request(
        self, conn: AsyncConnection, actor: str, request_id: str
    ) -> Decision | None:
        """The decision recorded for a client request id."""
        row = (
            await conn.execute(
                select(decisions.c.record).where(
                    decisions.c.request_key == request_key(actor, request_id)
                )
            )
        ).first()
        return None if row is None else Decision.from_json(row[0])

    async def add_decisions(self, conn: AsyncConnection, batch: Sequence[Decision]) -> None:
        """Records decisions (one statement per table for the whole batch)."""
        await conn.execute(decisions.insert(), [_decision_row(d) for d in batch])
        links = _policy_links(batch)
        if links:
            await conn.execute(decision_policies.insert(), links)

    async def get_decision(self, decision_id: str) -> Decision | None:
        """One decision."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(decisions.c.record).where(decisions.c.decision_id == decision_id)
                )
            ).first()
        return None if row is None else Decision.from_json(row[0])

    async def list_decisions(
        self, where: DecisionFilter, before_seq: int | None, limit: int
    ) -> list[tuple[int, Decision]]:
        """Decisions newest first, with their sequence numbers (for page tokens)."""
        query = select(decisions.c.seq, decisions.c.record).order_by(decisions.c.seq.desc())
        if before_seq is not None:
            query = query.where(decisions.c.seq < before_seq)
        if where.actor:
            query = query.where(decisions.c.actor == where.actor)
        if where.action_like and where.action_like != "*":
            query = query.where(decisions.c.action.like(like_pattern(where.action_like), "\\"))
        if where.verdict is not None:
            query = query.where(decisions.c.verdict == where.verdict.value)
        if where.policy_id:
            query = query.where(
                decisions.c.decision_id.in_(
                    select(decision_policies.c.decision_id).where(
                        decision_policies.c.policy_id == where.policy_id
                    )
                )
            )
        if where.since:
            query = query.where(decisions.c.time >= where.since)
        if where.until:
            query = query.where(decisions.c.time < where.until)
        async with self.db.read() as conn:
            rows = await conn.execute(query.limit(limit))
            return [(int(seq), Decision.from_json(record)) for seq, record in rows]

    async def decision_counts(self) -> tuple[dict[str, int], int]:
        """Decisions by verdict, and how many log-only let through that enforcing blocks."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(decisions.c.verdict, func.count()).group_by(decisions.c.verdict)
            )
            by_verdict = {str(v): int(n) for v, n in rows}
            would = await conn.scalar(
                select(func.count())
                .select_from(decisions)
                .where(
                    decisions.c.verdict == Verdict.ALLOW.value,
                    decisions.c.evaluated_verdict != Verdict.ALLOW.value,
                )
            )
        return by_verdict, int(would or 0)

    async def redeem(
        self, conn: AsyncConnection, decision_id: str, now: float, request_sha256: str
    ) -> float | None:
        """Marks a decision redeemed; returns when an earlier redemption happened instead
        (then nothing changes), or None when this call redeemed it."""
        earlier = (
            await conn.execute(
                select(redemptions.c.redeemed_at).where(redemptions.c.decision_id == decision_id)
            )
        ).first()
        if earlier is not None:
            return float(earlier[0])
        await conn.execute(
            redemptions.insert().values(
                decision_id=decision_id, redeemed_at=now, request_sha256=request_sha256
            )
        )
        return None

    # Approvals ------------------------------------------------------------------------

    def add_decisions_sqlite(
        self, conn: sqlite3.Connection, batch: Sequence[Decision], new: Sequence[Approval]
    ) -> None:
        """`add_decisions` and `add_approvals` on the writer's connection (SQLite), inside
        the caller's transaction: the same rows, their records as JSON text."""
        self._decisions_sqlite.run(
            conn, [_sqlite_values(_decision_row(d), _DECISION_COLUMNS) for d in batch]
        )
        links = _policy_links(batch)
        if links:
            self._links_sqlite.run(conn, [_sqlite_values(r, _LINK_COLUMNS) for r in links])
        if new:
            self._approvals_sqlite.run(
                conn, [_sqlite_values(_approval_row(a), _APPROVAL_COLUMNS) for a in new]
            )

    async def add_approvals(self, conn: AsyncConnection, batch: Sequence[Approval]) -> None:
        """Records new approval requests."""
        await conn.execute(approvals.insert(), [_approval_row(a) for a in batch])

    async def get_approval(
        self, approval_id: str, conn: AsyncConnection | None = None
    ) -> Approval | None:
        """One approval request."""
        query = select(approvals.c.record).where(approvals.c.approval_id == approval_id)
        if conn is not None:
            row = (await conn.execute(query)).first()
        else:
            async with self.db.read() as read:
                row = (await read.execute(query)).first()
        return None if row is None else approval_from_json(row[0])

    async def save_approval(self, conn: AsyncConnection, approval: Approval) -> None:
        """Stores a changed approval request."""
        await conn.execute(
            update(approvals)
            .where(approvals.c.approval_id == approval.approval_id)
            .values(status=approval.status.value, record=approval_to_json(approval))
        )

    async def list_approvals(
        self, status: ApprovalStatus | None, before_seq: int | None, limit: int
    ) -> list[tuple[int, Approval]]:
        """Approval requests newest first, with their sequence numbers."""
        query = select(approvals.c.seq, approvals.c.record).order_by(approvals.c.seq.desc())
        if status is not None:
            query = query.where(approvals.c.status == status.value)
        if before_seq is not None:
            query = query.where(approvals.c.seq < before_seq)
        async with self.db.read() as conn:
            rows = await conn.execute(query.limit(limit))
            return [(int(seq), approval_from_json(record)) for seq, record in rows]

    async def expired_approvals(self, now: float) -> Sequence[str]:
        """Ids of pending approval requests past their deadline."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(approvals.c.approval_id).where(
                    approvals.c.status == ApprovalStatus.PENDING.value,
                    approvals.c.expires_at <= now,
                )
            )
            return [str(r[0]) for r in rows]

    async def approval_counts(self) -> dict[str, int]:
        """Approval requests by status."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(approvals.c.status, func.count()).group_by(approvals.c.status)
            )
            return {str(s): int(n) for s, n in rows}

    # Settings -------------------------------------------------------------------------

    async def get_setting(self, key: str) -> str | None:
        """A persisted setting."""
        async with self.db.read() as conn:
            return await conn.scalar(select(settings.c.value).where(settings.c.key == key))

    async def set_setting(self, key: str, value: str) -> None:
        """Persists a setting."""
        async with self.db.transaction() as conn:
            await self.write_setting(conn, key, value)

    async def write_setting(self, conn: AsyncConnection, key: str, value: str) -> None:
        """Persists a setting in the caller's transaction."""
        stmt = self.db.insert(settings).values(key=key, value=value)
        await conn.execute(
            stmt.on_conflict_do_update(index_elements=["key"], set_={"value": value})
        )


_DECISION_COLUMNS = (
    "decision_id",
    "request_key",
    "actor",
    "action",
    "verdict",
    "evaluated_verdict",
    "time",
    "record",
)
_LINK_COLUMNS = ("decision_id", "policy_id")
_APPROVAL_COLUMNS = ("approval_id", "decision_id", "status", "expires_at", "record")


def _decision_row(d: Decision) -> dict[str, Any]:
    return {
        "decision_id": d.decision_id,
        "request_key": request_key(d.request.actor, d.request_id) if d.request_id else None,
        "actor": d.request.actor,
        "action": d.request.action,
        "verdict": d.verdict.value,
        "evaluated_verdict": d.evaluation.evaluated_verdict.value,
        "time": d.time,
        "record": d.to_json(),
    }


def _policy_links(batch: Sequence[Decision]) -> list[dict[str, Any]]:
    return [
        {"decision_id": d.decision_id, "policy_id": p}
        for d in batch
        for p in d.evaluation.policy_ids
    ]


def _approval_row(a: Approval) -> dict[str, Any]:
    return {
        "approval_id": a.approval_id,
        "decision_id": a.decision_id,
        "status": a.status.value,
        "expires_at": a.expires_at,
        "record": approval_to_json(a),
    }


def _sqlite_values(row: dict[str, Any], columns: Sequence[str]) -> tuple[Any, ...]:
    """A row's values in `columns` order for `sqlite3`, its JSON `record` as text."""
    return tuple(json.dumps(row[c]) if c == "record" else row[c] for c in columns)
