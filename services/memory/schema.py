"""The shared memory's tables and how rows map to model objects.

Every table is prefixed `memory_`: contributions (with the ranking columns and, on
PostgreSQL, the tsvector of the full-text index), their tags, verdicts, applications,
retractions and the outbox. SQLite's full-text index is an FTS5 virtual table created by
`search.py`.
"""

from __future__ import annotations

from typing import Any

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
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import TSVECTOR

from services.common.outbox import outbox_table
from services.memory.confidence import Evidence
from services.memory.model import (
    Application,
    Contribution,
    Outcome,
    Retraction,
    Verdict,
    VerdictKind,
)

metadata = MetaData()

# SQLite only makes INTEGER PRIMARY KEY an alias of the rowid (which FTS5 rows point at).
_SEQ = BigInteger().with_variant(Integer(), "sqlite")

contributions = Table(
    "memory_contributions",
    metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=True),
    Column("contribution_id", String(36), nullable=False, unique=True),
    Column("domain_id", String(128), nullable=False),
    Column("contribution_type", String(64), nullable=False),
    Column("content", JSON, nullable=False),
    Column("tags", JSON, nullable=False),
    Column("initial_confidence", Float, nullable=False),
    Column("confidence", Float, nullable=False),
    Column("verifications", Integer, nullable=False, default=0),
    Column("disputes", Integer, nullable=False, default=0),
    Column("successes", Integer, nullable=False, default=0),
    Column("failures", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("request_id", String(128), nullable=True),
    Column("request_digest", String(64), nullable=True),
    # Words in the indexed document, for the ranking's length normalization.
    Column("words", Integer, nullable=False, default=0),
    # PostgreSQL's full-text index: the document's tsvector, GIN-indexed, in the row
    # itself so a search reads ranking columns straight from its bitmap heap scan. Always
    # NULL on SQLite, whose index is the FTS5 table `memory_search`.
    Column("search", Text().with_variant(TSVECTOR(), "postgresql"), nullable=True),
    UniqueConstraint("domain_id", "request_id", name="memory_contributions_request"),
    Index("memory_contributions_domain", "domain_id", "seq"),
    # Covers TopContributors' GROUP BY: no row lookups for 100,000 contributions.
    Index(
        "memory_contributions_domain_stats",
        "domain_id",
        "confidence",
        "verifications",
        "successes",
    ),
    Index("memory_contributions_type", "contribution_type"),
    # Covers the ranking's join, so a search touches no wide rows until its page is known.
    Index("memory_contributions_rank", "seq", "confidence", "words"),
    Index("memory_contributions_search", "search", postgresql_using="gin").ddl_if(
        dialect="postgresql"
    ),
)

tags = Table(
    "memory_tags",
    metadata,
    Column("tag", String(64), primary_key=True),
    Column("seq", _SEQ, primary_key=True),
)

verdicts = Table(
    "memory_verdicts",
    metadata,
    Column("seq", _SEQ, primary_key=True),
    Column("domain_id", String(128), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("time", Float, nullable=False),
)

applications = Table(
    "memory_applications",
    metadata,
    Column("application_id", String(36), primary_key=True),
    Column("seq", _SEQ, nullable=False),
    Column("domain_id", String(128), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("detail", Text, nullable=False),
    Column("request_id", String(128), nullable=True),
    Column("time", Float, nullable=False),
    UniqueConstraint("seq", "domain_id", "request_id", name="memory_applications_request"),
    Index("memory_applications_seq", "seq", "time"),
)

# Retractions live beside the contributions rather than in a column of theirs: the
# contribution table and its covering indexes stay as they are (existing databases need
# no migration), and the few retracted rows are subtracted from aggregates instead of
# every aggregate reading a flag from every row.
retractions = Table(
    "memory_retractions",
    metadata,
    Column("seq", _SEQ, primary_key=True),
    Column("domain_id", String(128), nullable=False),
    Column("reason", Text, nullable=False),
    Column("request_id", String(128), nullable=True),
    Column("time", Float, nullable=False),
)

outbox = outbox_table(metadata, "memory")


def contribution_from_row(row: Any) -> Contribution:
    """A Contribution from a row of `memory_contributions`."""
    m = row._mapping
    return Contribution(
        contribution_id=m["contribution_id"],
        domain_id=m["domain_id"],
        contribution_type=m["contribution_type"],
        content=dict(m["content"]),
        tags=tuple(m["tags"]),
        initial_confidence=m["initial_confidence"],
        confidence=m["confidence"],
        evidence=Evidence(m["verifications"], m["disputes"], m["successes"], m["failures"]),
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        seq=m["seq"],
    )


def contribution_row(
    c: Contribution, document: str, request_id: str, digest: str
) -> dict[str, Any]:
    """The row of `memory_contributions` for a new contribution (without `seq`)."""
    return {
        "words": len(document.split()),
        "contribution_id": c.contribution_id,
        "domain_id": c.domain_id,
        "contribution_type": c.contribution_type,
        "content": c.content,
        "tags": list(c.tags),
        "initial_confidence": c.initial_confidence,
        "confidence": c.confidence,
        "verifications": c.evidence.verifications,
        "disputes": c.evidence.disputes,
        "successes": c.evidence.successes,
        "failures": c.evidence.failures,
        "created_at": c.created_at,
        "updated_at": c.updated_at,
        "request_id": request_id or None,
        "request_digest": digest or None,
    }


def retraction_from_row(row: Any) -> Retraction:
    """A Retraction from a row of `memory_retractions`."""
    return Retraction(row.reason, row.time, row.request_id or "")


def verdict_from_row(row: Any) -> Verdict:
    """A Verdict from a row of `memory_verdicts`."""
    return Verdict(row.domain_id, VerdictKind(row.kind), row.reason, row.time)


def application_from_row(row: Any) -> Application:
    """An Application from a row of `memory_applications` joined with its contribution id."""
    return Application(
        application_id=row.application_id,
        contribution_id=row.contribution_id,
        domain_id=row.domain_id,
        outcome=Outcome(row.outcome),
        detail=row.detail,
        time=row.time,
    )
