"""Durable state of the shared memory on SQLite or PostgreSQL.

Tables are defined in `schema.py`; the full-text index per backend in `search.py`.
Writes take the caller's connection so a change, its index row and its announcing event
commit in one transaction. Retracted contributions stay in `memory_contributions` (for
GetContribution's audit) with a row in `memory_retractions`; lists skip them and
aggregates subtract them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import Text, bindparam, exists, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.storage import Database
from services.memory import search
from services.memory.model import (
    Application,
    Contribution,
    Contributor,
    ContributorOrder,
    Hit,
    Retraction,
    SearchFilter,
    Stats,
    Verdict,
)
from services.memory.schema import (
    application_from_row,
    applications,
    contribution_from_row,
    contribution_row,
    contributions,
    metadata,
    retraction_from_row,
    retractions,
    tags,
    verdict_from_row,
    verdicts,
)


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
                    select(func.count(), func.coalesce(func.sum(contributions.c.words), 0)).where(
                        ~_retracted()
                    )
                )
            ).one()
        self.corpus = search.Corpus(int(documents), int(words))

    def _insert(self) -> Any:
        """INSERT into memory_contributions; parameters carry the document as `search_doc`."""
        if self.db.is_sqlite:
            return contributions.insert()
        return contributions.insert().values(
            search=func.to_tsvector("simple", bindparam("search_doc", type_=Text()))
        )

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
            self._insert().returning(contributions.c.seq),
            {**contribution_row(c, document, request_id, digest), "search_doc": document},
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
                # A plain executemany (one driver call), then the ids' seqs in one read:
                # RETURNING with a guaranteed row order would insert row by row.
                await conn.execute(
                    self._insert(),
                    [{**contribution_row(c, doc, "", ""), "search_doc": doc} for c, doc in part],
                )
                found = await conn.execute(
                    select(contributions.c.contribution_id, contributions.c.seq).where(
                        contributions.c.contribution_id.in_([c.contribution_id for c, _ in part])
                    )
                )
                seq_of = {cid: int(seq) for cid, seq in found}
                seqs = [seq_of[c.contribution_id] for c, _ in part]
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
        if not self.db.is_sqlite:
            # Fresh statistics, or PostgreSQL plans the next searches for an empty table
            # (autovacuum would catch up, but only after a while).
            async with self.db.transaction() as conn:
                await conn.execute(text("ANALYZE memory_contributions, memory_tags"))

    async def lock(self, conn: AsyncConnection, contribution_id: str) -> Contribution | None:
        """The contribution, row-locked until the transaction ends (PostgreSQL; SQLite
        serializes writers anyway)."""
        result = await conn.execute(
            select(contributions)
            .where(contributions.c.contribution_id == contribution_id)
            .with_for_update()
        )
        row = result.first()
        return await _with_retraction(conn, contribution_from_row(row)) if row else None

    async def retract(
        self, conn: AsyncConnection, c: Contribution, retraction: Retraction, document: str
    ) -> None:
        """Records the author's retraction and takes the contribution out of the full-text
        index; `document` is the text it was indexed with."""
        await conn.execute(
            retractions.insert().values(
                seq=c.seq,
                domain_id=c.domain_id,
                reason=retraction.reason,
                request_id=retraction.request_id or None,
                time=retraction.time,
            )
        )
        await self.index.remove(conn, c.seq, document)
        self.corpus = search.Corpus(
            max(0, self.corpus.documents - 1),
            max(0, self.corpus.words - len(document.split())),
        )

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
        if row is None:
            return None
        return await _with_retraction(conn, contribution_from_row(row)), row.request_digest or ""

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
        return verdict_from_row(row) if row else None

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
        return application_from_row(row) if row else None

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
            return await _with_retraction(conn, contribution_from_row(row)) if row else None

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
            return [verdict_from_row(r) for r in rows]

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
            return [application_from_row(r) for r in rows]

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
            # Counted over the index, then the (few) retracted ones taken off.
            total -= (
                await conn.execute(
                    select(func.count())
                    .select_from(contributions)
                    .where(_among_retracted(retractions.c.domain_id == domain_id), *where)
                )
            ).scalar_one()
            page = [*where, ~_retracted()]
            page += [contributions.c.seq < before_seq] if before_seq is not None else []
            rows = await conn.execute(
                select(contributions).where(*page).order_by(contributions.c.seq.desc()).limit(limit)
            )
            return [contribution_from_row(r) for r in rows], int(total)

    async def top_contributors(self, order: ContributorOrder, limit: int) -> list[Contributor]:
        """Domains ranked by contribution count or mean confidence.

        Every domain's totals come from the covering index, the retracted contributions'
        totals are subtracted, and the (few) domains are ranked here.
        """
        c = contributions.c
        columns = (
            func.count(),
            func.sum(c.confidence),
            func.sum(c.verifications),
            func.sum(c.successes),
        )
        async with self.db.read() as conn:
            rows = await conn.execute(select(c.domain_id, *columns).group_by(c.domain_id))
            totals = {
                str(d): (int(n), float(m or 0), int(v or 0), int(s or 0)) for d, n, m, v, s in rows
            }
            rows = await conn.execute(
                select(c.domain_id, *columns).where(_among_retracted()).group_by(c.domain_id)
            )
            for d, n, m, v, s in rows:
                tn, tm, tv, ts = totals[str(d)]
                totals[str(d)] = (
                    tn - int(n),
                    tm - float(m or 0),
                    tv - int(v or 0),
                    ts - int(s or 0),
                )
        contributors = [
            Contributor(d, n, _unit(m / n), v, s) for d, (n, m, v, s) in totals.items() if n > 0
        ]
        if order is ContributorOrder.COUNT:
            contributors.sort(key=lambda x: (-x.contributions, -x.mean_confidence, x.domain_id))
        else:
            contributors.sort(key=lambda x: (-x.mean_confidence, -x.contributions, x.domain_id))
        return contributors[:limit]

    async def stats(self) -> Stats:
        """Totals over every contribution that is not retracted (the retracted ones are
        summed apart and subtracted: there are few of them)."""
        c = contributions.c
        columns = (
            func.count(),
            func.sum(c.verifications),
            func.sum(c.disputes),
            func.sum(c.successes),
            func.sum(c.failures),
            func.sum(c.confidence),
        )
        async with self.db.read() as conn:
            everything = (await conn.execute(select(*columns).select_from(contributions))).one()
            retracted = (
                await conn.execute(
                    select(*columns).select_from(contributions).where(_among_retracted())
                )
            ).one()
            total, v, d, s, f, confidence = (
                (a or 0) - (b or 0) for a, b in zip(everything, retracted, strict=True)
            )
            by_type = await _counts_by(conn, c.contribution_type)
            by_domain = await _counts_by(conn, c.domain_id)
        return Stats(
            total=int(total),
            by_type=by_type,
            by_domain=by_domain,
            verifications=int(v),
            disputes=int(d),
            successes=int(s),
            failures=int(f),
            mean_confidence=_unit(float(confidence) / total) if total else 0.0,
            retracted=int(retracted[0] or 0),
        )


def _unit(mean: float) -> float:
    """A mean of confidences, kept in [0, 1] against the rounding of a subtraction."""
    return min(1.0, max(0.0, mean))


def _retracted() -> Any:
    """True for a contribution row that was retracted."""
    return exists().where(retractions.c.seq == contributions.c.seq)


def _among_retracted(*where: Any) -> Any:
    """Selects the retracted contributions (optionally narrowed by `where` on
    memory_retractions). Written as `seq IN (...)` so the planner starts from the few
    retraction rows: as a join, SQLite would rather walk every contribution."""
    return contributions.c.seq.in_(select(retractions.c.seq).where(*where))


async def _counts_by(conn: AsyncConnection, column: Any) -> dict[str, int]:
    """Contributions per value of `column`, leaving out retracted ones."""
    counts = {
        str(k): int(n) for k, n in await conn.execute(select(column, func.count()).group_by(column))
    }
    for k, n in await conn.execute(
        select(column, func.count()).where(_among_retracted()).group_by(column)
    ):
        counts[str(k)] -= int(n)
    return {k: n for k, n in counts.items() if n > 0}


async def _with_retraction(conn: AsyncConnection, c: Contribution) -> Contribution:
    """The contribution with its retraction, if its author retracted it."""
    row = (await conn.execute(select(retractions).where(retractions.c.seq == c.seq))).first()
    return replace(c, retraction=retraction_from_row(row)) if row else c
