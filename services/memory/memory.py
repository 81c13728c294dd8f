"""The shared memory core: validation, evidence and confidence, search, notifications.

Plain Python over `MemoryStore`; the gRPC servicer only converts messages. Every write is
one transaction that also enqueues the announcing event in the outbox, and writers are
serialized in-process (SQLite allows one writer anyway; PostgreSQL rows are also locked
with SELECT ... FOR UPDATE, so several instances stay correct). After a commit the change
goes to in-process watchers and the outbox relay is woken.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from services.common.outbox import Outbox
from services.common.pagination import decode_token, encode_token, page_size, take_page
from services.common.patterns import validate_pattern
from services.common.validation import (
    require_id,
    require_range,
    require_text,
)
from services.memory import limits, schema, text
from services.memory.confidence import Evidence, confidence
from services.memory.feed import Feed
from services.memory.model import (
    Application,
    Change,
    ChangeKind,
    Contribution,
    Contributor,
    ContributorOrder,
    Hit,
    NewContribution,
    Outcome,
    Retraction,
    SearchFilter,
    Stats,
    Verdict,
    VerdictKind,
)
from services.memory.store import MemoryStore
from services.memory.text import query_words

SOURCE = "memory"


@dataclass(frozen=True)
class MemorySettings:
    """Tunables of the shared memory.

    Attributes:
        default_confidence: Initial confidence of a contribution that gives none.
        max_content_bytes: Largest content accepted, measured as compact JSON.
        watch_buffer: Changes a watch stream may fall behind before it is cut off.
    """

    default_confidence: float = 0.5
    max_content_bytes: int = 1024 * 1024
    watch_buffer: int = 10_000


class SharedMemory:
    """Contributions, verdicts, applications and search, with notifications.

    Args:
        store: Where state lives.
        settings: Tunables.
        clock: Returns epoch seconds; injectable for tests.
    """

    def __init__(
        self,
        store: MemoryStore,
        settings: MemorySettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings or MemorySettings()
        self.clock = clock
        self.outbox = Outbox(store.db, schema.outbox, SOURCE)
        self.feed = Feed(self.settings.watch_buffer)
        self._write_lock = asyncio.Lock()
        self._committed: list[Callable[[], None]] = []

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Calls `callback` after every transaction that enqueued an event (wakes the relay)."""
        self._committed.append(callback)

    async def open(self) -> None:
        """Creates the tables if missing."""
        await self.store.open()

    def close(self) -> None:
        """Ends every watch stream."""
        self.feed.close()

    def _announce(self, change: Change) -> None:
        self.feed.publish(change)
        for callback in self._committed:
            callback()

    async def _enqueue(self, conn: Any, change: Change) -> None:
        c = change.contribution
        data = {
            "contribution_id": c.contribution_id,
            "contribution_type": c.contribution_type,
            "author_domain": c.domain_id,
            "actor_domain": change.actor,
            "tags": list(c.tags),
            "confidence": c.confidence,
            **change.detail,
        }
        await self.outbox.enqueue(conn, change.kind.value, data, subject=c.contribution_id)

    # -- writes ---------------------------------------------------------------------------

    async def contribute(self, new: NewContribution) -> tuple[Contribution, bool]:
        """Stores a contribution; returns it and whether it is new (False on a retry)."""
        domain_id = require_id("domain_id", new.domain_id)
        contribution_type = limits.require_type("contribution_type", new.contribution_type)
        tags = limits.require_tags(new.tags)
        initial = self.settings.default_confidence
        if new.initial_confidence is not None:
            initial = require_range(
                "initial_confidence", new.initial_confidence, minimum=0.0, maximum=1.0
            )
        request_id = require_text(
            "request_id", new.request_id, max_length=limits.MAX_REQUEST_ID_LENGTH
        )
        size = limits.content_size(new.content)
        if size > self.settings.max_content_bytes:
            raise InvalidArgument(
                "content",
                f"is {size} bytes as JSON; the limit is {self.settings.max_content_bytes}",
            )
        digest = limits.digest(contribution_type, tags, new.content, initial) if request_id else ""
        now = self.clock()
        contribution = Contribution(
            contribution_id=str(uuid.uuid4()),
            domain_id=domain_id,
            contribution_type=contribution_type,
            content=new.content,
            tags=tags,
            initial_confidence=initial,
            confidence=confidence(initial, Evidence()),
            evidence=Evidence(),
            created_at=now,
            updated_at=now,
        )
        document = text.document(contribution_type, tags, new.content)
        async with self._write_lock, self.store.db.transaction() as conn:
            if request_id:
                found = await self.store.by_request(conn, domain_id, request_id)
                if found is not None:
                    earlier, earlier_digest = found
                    if earlier_digest != digest:
                        raise AlreadyExists(
                            "request", request_id, "it was used for a different contribution"
                        )
                    return earlier, False
            seq = await self.store.insert(conn, contribution, document, request_id, digest)
            contribution = replace(contribution, seq=seq)
            change = Change(ChangeKind.CONTRIBUTED, contribution, domain_id)
            await self._enqueue(conn, change)
        self._announce(change)
        return contribution, True

    async def verify(
        self, contribution_id: str, domain_id: str, reason: str = ""
    ) -> tuple[Contribution, bool]:
        """Records that `domain_id` vouches for a contribution; returns it and whether
        anything changed."""
        reason = require_text("reason", reason, max_length=limits.MAX_REASON_LENGTH)
        return await self._judge(contribution_id, domain_id, VerdictKind.VERIFIED, reason)

    async def dispute(
        self, contribution_id: str, domain_id: str, reason: str
    ) -> tuple[Contribution, bool]:
        """Records that `domain_id` disputes a contribution; returns it and whether
        anything changed."""
        reason = require_text("reason", reason, max_length=limits.MAX_REASON_LENGTH, required=True)
        return await self._judge(contribution_id, domain_id, VerdictKind.DISPUTED, reason)

    async def _judge(
        self, contribution_id: str, domain_id: str, kind: VerdictKind, reason: str
    ) -> tuple[Contribution, bool]:
        contribution_id = limits.require_contribution_id(contribution_id)
        domain_id = require_id("domain_id", domain_id)
        async with self._write_lock, self.store.db.transaction() as conn:
            current = await self.store.lock(conn, contribution_id)
            if current is None:
                raise NotFound("contribution", contribution_id)
            _require_not_retracted(current, "verified or disputed")
            if current.domain_id == domain_id:
                raise FailedPrecondition(
                    f"domain {domain_id!r} wrote contribution {contribution_id!r}: the author "
                    f"cannot verify or dispute its own contribution",
                    reason="SELF_VERDICT",
                    metadata={"contribution_id": contribution_id, "domain_id": domain_id},
                )
            previous = await self.store.verdict_of(conn, current.seq, domain_id)
            if previous is not None and previous.kind is kind:
                return current, False
            ev = current.evidence
            verified = int(kind is VerdictKind.VERIFIED) - int(
                previous is not None and previous.kind is VerdictKind.VERIFIED
            )
            disputed = int(kind is VerdictKind.DISPUTED) - int(
                previous is not None and previous.kind is VerdictKind.DISPUTED
            )
            evidence = replace(
                ev, verifications=ev.verifications + verified, disputes=ev.disputes + disputed
            )
            now = self.clock()
            updated = replace(
                current,
                evidence=evidence,
                confidence=confidence(current.initial_confidence, evidence),
                updated_at=now,
            )
            await self.store.put_verdict(conn, current.seq, Verdict(domain_id, kind, reason, now))
            await self.store.save_evidence(conn, updated)
            change_kind = (
                ChangeKind.VERIFIED if kind is VerdictKind.VERIFIED else ChangeKind.DISPUTED
            )
            change = Change(change_kind, updated, domain_id, {"reason": reason})
            await self._enqueue(conn, change)
        self._announce(change)
        return updated, True

    async def apply(
        self,
        contribution_id: str,
        domain_id: str,
        outcome: Outcome | None,
        detail: str = "",
        request_id: str = "",
    ) -> tuple[Contribution, Application, bool]:
        """Records an application and its outcome; returns the contribution, the
        application and whether it is new (False on a retry with the same request id)."""
        contribution_id = limits.require_contribution_id(contribution_id)
        domain_id = require_id("domain_id", domain_id)
        if outcome is None:
            raise InvalidArgument("outcome", "is required (OUTCOME_SUCCESS or OUTCOME_FAILURE)")
        detail = require_text("detail", detail, max_length=limits.MAX_DETAIL_LENGTH)
        request_id = require_text("request_id", request_id, max_length=limits.MAX_REQUEST_ID_LENGTH)
        async with self._write_lock, self.store.db.transaction() as conn:
            current = await self.store.lock(conn, contribution_id)
            if current is None:
                raise NotFound("contribution", contribution_id)
            if request_id:
                earlier = await self.store.application_by_request(
                    conn, current.seq, domain_id, request_id
                )
                if earlier is not None:
                    return current, earlier, False
            _require_not_retracted(current, "applied")
            now = self.clock()
            application = Application(
                str(uuid.uuid4()), contribution_id, domain_id, outcome, detail, now
            )
            ev = current.evidence
            success = outcome is Outcome.SUCCESS
            evidence = replace(
                ev, successes=ev.successes + success, failures=ev.failures + (not success)
            )
            updated = replace(
                current,
                evidence=evidence,
                confidence=confidence(current.initial_confidence, evidence),
                updated_at=now,
            )
            await self.store.add_application(conn, current.seq, application, request_id)
            await self.store.save_evidence(conn, updated)
            change = Change(
                ChangeKind.APPLIED,
                updated,
                domain_id,
                {
                    "application_id": application.application_id,
                    "outcome": outcome.value,
                    "detail": detail,
                },
            )
            await self._enqueue(conn, change)
        self._announce(change)
        return updated, application, True

    async def retract(
        self, contribution_id: str, domain_id: str, reason: str, request_id: str = ""
    ) -> tuple[Contribution, bool]:
        """Withdraws a contribution on behalf of its author; returns it, flagged retracted,
        and whether anything changed (False when it was already retracted)."""
        contribution_id = limits.require_contribution_id(contribution_id)
        domain_id = require_id("domain_id", domain_id)
        reason = require_text("reason", reason, max_length=limits.MAX_REASON_LENGTH, required=True)
        request_id = require_text("request_id", request_id, max_length=limits.MAX_REQUEST_ID_LENGTH)
        async with self._write_lock, self.store.db.transaction() as conn:
            current = await self.store.lock(conn, contribution_id)
            if current is None:
                raise NotFound("contribution", contribution_id)
            if current.domain_id != domain_id:
                raise PermissionDenied(
                    f"domain {domain_id!r} did not write contribution {contribution_id!r}: "
                    f"only its author {current.domain_id!r} may retract it",
                    reason="NOT_AUTHOR",
                    metadata={"contribution_id": contribution_id, "domain_id": domain_id},
                )
            if current.retraction is not None:
                # Retracting is a state, not a count: a retry (or a second compensation)
                # finds it done and changes nothing, whatever its reason or request id.
                return current, False
            retraction = Retraction(reason, self.clock(), request_id)
            document = text.document(current.contribution_type, current.tags, current.content)
            await self.store.retract(conn, current, retraction, document)
            updated = replace(current, retraction=retraction)
            change = Change(
                ChangeKind.RETRACTED,
                updated,
                domain_id,
                {"reason": reason, "request_id": request_id},
            )
            await self._enqueue(conn, change)
        self._announce(change)
        return updated, True

    # -- reads ----------------------------------------------------------------------------

    async def get(
        self, contribution_id: str
    ) -> tuple[Contribution, list[Verdict], list[Application]]:
        """A contribution, its verdicts and its most recent applications."""
        contribution_id = limits.require_contribution_id(contribution_id)
        found = await self.store.get(contribution_id)
        if found is None:
            raise NotFound("contribution", contribution_id)
        verdicts = await self.store.verdicts_of(found.seq)
        applications = await self.store.recent_applications(found.seq, limits.RECENT_APPLICATIONS)
        return found, verdicts, applications

    async def query(
        self,
        query: str,
        *,
        min_confidence: float = 0.0,
        contribution_type: str = "",
        domain_id: str = "",
        tags: Sequence[str] = (),
        size: int = 0,
        token: str = "",
        size_of: Callable[[Hit], int] = lambda _: 0,
    ) -> tuple[list[Hit], str]:
        """One page of search results, best first, and the next page's token (`size_of`: see
        `list_by_domain`)."""
        search = SearchFilter(
            terms=tuple(query_words(query)),
            min_confidence=require_range(
                "min_confidence", min_confidence, minimum=0.0, maximum=1.0
            ),
            contribution_type=(
                limits.require_type("contribution_type", contribution_type)
                if contribution_type
                else ""
            ),
            domain_id=require_id("domain_id", domain_id) if domain_id else "",
            tags=limits.require_tags(tags),
        )
        limit = page_size(size)
        fingerprint = limits.digest(
            search.terms,
            search.min_confidence,
            search.contribution_type,
            search.domain_id,
            sorted(search.tags),
        )[:16]
        offset = 0
        position = decode_token(token)
        if position is not None:
            if position.get("f") != fingerprint or not isinstance(position.get("o"), int):
                raise InvalidArgument("page_token", "belongs to a different query or filters")
            offset = position["o"]
        limit = max(0, min(limit, limits.MAX_SEARCH_RESULTS - offset))
        if limit == 0:
            return [], ""
        hits, more = take_page(await self.store.search(search, offset, limit + 1), limit, size_of)
        next_token = ""
        if more and offset + len(hits) < limits.MAX_SEARCH_RESULTS:
            next_token = encode_token({"o": offset + len(hits), "f": fingerprint})
        return hits, next_token

    async def list_by_domain(
        self,
        domain_id: str,
        contribution_type: str = "",
        size: int = 0,
        token: str = "",
        size_of: Callable[[Contribution], int] = lambda _: 0,
    ) -> tuple[list[Contribution], str, int]:
        """One page of a domain's contributions, newest first, the next token and the total.

        `size_of` tells an item's encoded size in the reply; the page ends early rather than
        exceed `pagination.MAX_PAGE_BYTES`.
        """
        domain_id = require_id("domain_id", domain_id)
        if contribution_type:
            limits.require_type("contribution_type", contribution_type)
        limit = page_size(size)
        position = decode_token(token)
        before = None
        if position is not None:
            if not isinstance(position.get("s"), int):
                raise InvalidArgument("page_token", "is not a token this service issued")
            before = position["s"]
        found, total = await self.store.by_domain(domain_id, contribution_type, before, limit + 1)
        items, more = take_page(found, limit, size_of)
        next_token = encode_token({"s": items[-1].seq}) if more else ""
        return items, next_token, total

    async def top_contributors(
        self, order: ContributorOrder = ContributorOrder.COUNT, limit: int = 0
    ) -> list[Contributor]:
        """The leading contributing domains."""
        if limit < 0 or limit > 1000:
            raise InvalidArgument("limit", "must be between 0 and 1000")
        return await self.store.top_contributors(order, limit or limits.DEFAULT_TOP_CONTRIBUTORS)

    async def stats(self) -> Stats:
        """Totals over the whole memory."""
        return await self.store.stats()

    def watch(self, pattern: str = "") -> AsyncIterator[Change]:
        """Committed changes to contributions whose type matches `pattern` ("" = all)."""
        return self.feed.watch(validate_pattern(pattern) if pattern else "*")


def _require_not_retracted(contribution: Contribution, what: str) -> None:
    """Refuses evidence about a contribution its author withdrew."""
    if contribution.retraction is not None:
        raise FailedPrecondition(
            f"contribution {contribution.contribution_id!r} was retracted by its author and "
            f"cannot be {what}",
            reason="RETRACTED",
            metadata={"contribution_id": contribution.contribution_id},
        )
