"""Durable state of the shared memory on SQLite or PostgreSQL.

Tables (all prefixed `memory_`): contributions, their tags, verdicts, applications, the
outbox, and a full-text index keyed by the contribution's `seq`: an FTS5 virtual table on
SQLite, a `tsvector` column with a GIN index on PostgreSQL (see `search.py`). Writes take
the caller's connection so a change, its index row and its announcing event commit in one
transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    func,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.outbox import outbox_table
from services.common.storage import Database
from services.memory import search
from services.memory.confidence import Evidence
from services.memory.model import (
    Application,
    Contribution,
    Contributor,
    ContributorOrder,
    Hit,
    Outcome,
    SearchFilter,
    Stats,
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
    UniqueConstraint("domain_id", "request_id", name="memory_contributions_request"),
    Index("memory_contributions_domain", "domain_id", "seq"),
    Index("memory_contributions_type", "contribution_type"),
    # Covers the ranking's join, so a search touches no wide rows until its page is known.
    Index("memory_contributions_rank", "seq", "confidence", "words"),
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


class MemoryStore:
    """Reads and writes the shared memory's tables.

    Args:
        db: The database to use.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.index = search.index_for(db)
        # Collection size for the ranking, kept in memory: counted once at open, then
        # moved by this process's inserts (another instance's inserts only shift ranking
        # weights slightly until restart, never which contributions match).
        self.corpus = search.Corpus(0, 0)

    async def open(self) -> None:
        """Creates the tables and the full-text index if they are missing."""
        await self.db.create_tables(metadata)
        async with self.db.transaction() as conn:
            await self.index.create(conn)
        async with self.db.read() as conn:
            documents, words = (
                await conn.execute(
                    select(func.count(), func.coalesce(func.sum(contributions.c.words), 0))
                )
            ).one()
        self.corpus = search.Corpus(int(documents), int(words))

    def _counted(self, documents: Sequence[str]) -> None:
        self.corpus = search.Corpus(
            self.corpus.documents + len(documents),
            self.corpus.words + sum(len(d.split()) for d in documents),
        )

    async def close(self) -> None:
        """Closes the database."""
        await self.db.close()

    # -- writes (inside the caller's transaction) ---------------------------------------

    async def insert(
        self, conn: AsyncConnection, c: Contribution, document: str, request_id: str, digest: str
    ) -> int:
        """Stores a new contribution with its tags and index row; returns its seq."""
        result = await conn.execute(
            contributions.insert()
            .values(**contribution_row(c, document, request_id, digest))
            .returning(contributions.c.seq)
        )
        seq = int(result.scalar_one())
        if c.tags:
            await conn.execute(tags.insert(), [{"tag": t, "seq": seq} for t in c.tags])
        await self.index.add(conn, [(seq, document)])
        self._counted([document])
        return seq

    async def bulk_insert(
        self, rows: Sequence[tuple[Contribution, str]], *, chunk: int = 5000
    ) -> None:
        """Loads many contributions at once (imports, benchmarks): one transaction per
        chunk, multi-row inserts, no events. Rows are (contribution, indexed document)."""
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            async with self.db.transaction() as conn:
                result = await conn.execute(
                    contributions.insert().returning(
                        contributions.c.seq, sort_by_parameter_order=True
                    ),
                    [contribution_row(c, doc, "", "") for c, doc in part],
                )
                seqs = [int(s) for s in result.scalars()]
                tag_rows = [
                    {"tag": t, "seq": seq}
                    for seq, (c, _) in zip(seqs, part, strict=True)
                    for t in c.tags
                ]
                if tag_rows:
                    await conn.execute(tags.insert(), tag_rows)
                await self.index.add(
                    conn, [(seq, doc) for seq, (_, doc) in zip(seqs, part, strict=True)]
                )
            self._counted([doc for _, doc in part])

    async def lock(self, conn: AsyncConnection, contribution_id: str) -> Contribution | None:
        """The contribution, row-locked until the transaction ends (PostgreSQL; SQLite
        serializes writers anyway)."""
        result = await conn.execute(
            select(contributions)
            .where(contributions.c.contribution_id == contribution_id)
            .with_for_update()
        )
        row = result.first()
        return contribution_from_row(row) if row else None

    async def by_request(
        self, conn: AsyncConnection, domain_id: str, request_id: str
    ) -> tuple[Contribution, str] | None:
        """The contribution an earlier call with this request id stored, and its digest."""
        result = await conn.execute(
            select(contributions).where(
                contributions.c.domain_id == domain_id, contributions.c.request_id == request_id
            )
        )
        row = result.first()
        return (contribution_from_row(row), row.request_digest or "") if row else None

    async def save_evidence(self, conn: AsyncConnection, c: Contribution) -> None:
        """Writes a contribution's evidence counts, confidence and update time."""
        await conn.execute(
            update(contributions)
            .where(contributions.c.seq == c.seq)
            .values(
                verifications=c.evidence.verifications,
                disputes=c.evidence.disputes,
                successes=c.evidence.successes,
                failures=c.evidence.failures,
                confidence=c.confidence,
                updated_at=c.updated_at,
            )
        )

    async def verdict_of(self, conn: AsyncConnection, seq: int, domain_id: str) -> Verdict | None:
        """A domain's current verdict on a contribution."""
        result = await conn.execute(
            select(verdicts).where(verdicts.c.seq == seq, verdicts.c.domain_id == domain_id)
        )
        row = result.first()
        return _verdict(row) if row else None

    async def put_verdict(self, conn: AsyncConnection, seq: int, verdict: Verdict) -> None:
        """Stores a domain's verdict, replacing its previous one."""
        values = {"kind": verdict.kind.value, "reason": verdict.reason, "time": verdict.time}
        stmt = self.db.insert(verdicts).values(seq=seq, domain_id=verdict.domain_id, **values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[verdicts.c.seq, verdicts.c.domain_id], set_=values
        )
        await conn.execute(stmt)

    async def application_by_request(
        self, conn: AsyncConnection, seq: int, domain_id: str, request_id: str
    ) -> Application | None:
        """The application an earlier report with this request id recorded."""
        result = await conn.execute(
            select(applications, contributions.c.contribution_id)
            .join(contributions, contributions.c.seq == applications.c.seq)
            .where(
                applications.c.seq == seq,
                applications.c.domain_id == domain_id,
                applications.c.request_id == request_id,
            )
        )
        row = result.first()
        return _application(row) if row else None

    async def add_application(
        self, conn: AsyncConnection, seq: int, application: Application, request_id: str
    ) -> None:
        """Records an application."""
        await conn.execute(
            applications.insert().values(
                application_id=application.application_id,
                seq=seq,
                domain_id=application.domain_id,
                outcome=application.outcome.value,
                detail=application.detail,
                request_id=request_id or None,
                time=application.time,
            )
        )

    # -- reads ----------------------------------------------------------------------------

    async def get(self, contribution_id: str) -> Contribution | None:
        """One contribution by id."""
        async with self.db.read() as conn:
            result = await conn.execute(
                select(contributions).where(contributions.c.contribution_id == contribution_id)
            )
            row = result.first()
        return contribution_from_row(row) if row else None

    async def search(self, query: SearchFilter, offset: int, limit: int) -> list[Hit]:
        """One page of full-text matches, best score first."""
        async with self.db.read() as conn:
            ranked = await self.index.search(conn, query, self.corpus, offset, limit)
            if not ranked:
                return []
            rows = await conn.execute(
                select(contributions).where(contributions.c.seq.in_([r.seq for r in ranked]))
            )
            by_seq = {c.seq: c for c in map(contribution_from_row, rows)}
        return [Hit(by_seq[r.seq], r.relevance, r.score) for r in ranked if r.seq in by_seq]

    async def verdicts_of(self, seq: int) -> list[Verdict]:
        """Every current verdict on a contribution, oldest first."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(verdicts)
                .where(verdicts.c.seq == seq)
                .order_by(verdicts.c.time, verdicts.c.domain_id)
            )
            return [_verdict(r) for r in rows]

    async def recent_applications(self, seq: int, limit: int) -> list[Application]:
        """The newest applications of a contribution, newest first."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(applications, contributions.c.contribution_id)
                .join(contributions, contributions.c.seq == applications.c.seq)
                .where(applications.c.seq == seq)
                .order_by(applications.c.time.desc(), applications.c.application_id)
                .limit(limit)
            )
            return [_application(r) for r in rows]

    async def by_domain(
        self, domain_id: str, contribution_type: str, before_seq: int | None, limit: int
    ) -> tuple[list[Contribution], int]:
        """Up to `limit` of a domain's contributions older than `before_seq`, newest first,
        and how many match in all."""
        where = [contributions.c.domain_id == domain_id]
        if contribution_type:
            where.append(contributions.c.contribution_type == contribution_type)
        async with self.db.read() as conn:
            total = (
                await conn.execute(select(func.count()).select_from(contributions).where(*where))
            ).scalar_one()
            page = where + ([contributions.c.seq < before_seq] if before_seq is not None else [])
            rows = await conn.execute(
                select(contributions).where(*page).order_by(contributions.c.seq.desc()).limit(limit)
            )
            return [contribution_from_row(r) for r in rows], int(total)

    async def top_contributors(self, order: ContributorOrder, limit: int) -> list[Contributor]:
        """Domains ranked by contribution count or mean confidence."""
        count = func.count().label("n")
        mean = func.avg(contributions.c.confidence).label("mean")
        keys = (
            (count.desc(), mean.desc())
            if order is ContributorOrder.COUNT
            else (
                mean.desc(),
                count.desc(),
            )
        )
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(
                    contributions.c.domain_id,
                    count,
                    mean,
                    func.sum(contributions.c.verifications),
                    func.sum(contributions.c.successes),
                )
                .group_by(contributions.c.domain_id)
                .order_by(*keys, contributions.c.domain_id)
                .limit(limit)
            )
            return [
                Contributor(str(d), int(n), float(m or 0), int(v or 0), int(s or 0))
                for d, n, m, v, s in rows
            ]

    async def stats(self) -> Stats:
        """Totals over every contribution."""
        c = contributions.c
        async with self.db.read() as conn:
            total, v, d, s, f, mean = (
                await conn.execute(
                    select(
                        func.count(),
                        func.sum(c.verifications),
                        func.sum(c.disputes),
                        func.sum(c.successes),
                        func.sum(c.failures),
                        func.avg(c.confidence),
                    ).select_from(contributions)
                )
            ).one()
            by_type = await conn.execute(
                select(c.contribution_type, func.count()).group_by(c.contribution_type)
            )
            by_domain = await conn.execute(select(c.domain_id, func.count()).group_by(c.domain_id))
            return Stats(
                total=int(total),
                by_type={str(k): int(n) for k, n in by_type},
                by_domain={str(k): int(n) for k, n in by_domain},
                verifications=int(v or 0),
                disputes=int(d or 0),
                successes=int(s or 0),
                failures=int(f or 0),
                mean_confidence=float(mean or 0.0),
            )


def _verdict(row: Any) -> Verdict:
    return Verdict(row.domain_id, VerdictKind(row.kind), row.reason, row.time)


def _application(row: Any) -> Application:
    return Application(
        application_id=row.application_id,
        contribution_id=row.contribution_id,
        domain_id=row.domain_id,
        outcome=Outcome(row.outcome),
        detail=row.detail,
        time=row.time,
    )
