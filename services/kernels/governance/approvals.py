"""The approval queue: requests held by REQUIRE_APPROVAL until a person settles them.

A pending request is approved or rejected (with an approver and a reason; nobody approves
their own request) or expires after its deadline, which counts as rejected. Each change is
written with its bus event and immutable-log entry in one transaction, and wakes every
`watch` stream, so callers can wait for the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.outbox import Outbox
from services.common.pagination import decode_token, encode_token, page_size, take_page
from services.common.validation import require_text
from services.kernels.governance.model import Approval, ApprovalStatus
from services.kernels.governance.store import GovernanceStore, approval_to_json

log = logging.getLogger(__name__)

MAX_APPROVER_LENGTH = 256
MAX_REASON_LENGTH = 1024


class ApprovalQueue:
    """Approval requests and their watchers.

    Args:
        store: The store.
        events: Outbox of bus events.
        log_entries: Outbox of immutable log entries.
        lock: Serializes writes with the rest of governance.
        clock: Epoch seconds.
        committed: Called after each commit (wakes the relays).
    """

    def __init__(
        self,
        store: GovernanceStore,
        events: Outbox,
        log_entries: Outbox,
        lock: asyncio.Lock,
        clock: Callable[[], float],
        committed: Callable[[], None],
    ) -> None:
        self.store = store
        self.events = events
        self.log_entries = log_entries
        self.clock = clock
        self._lock = lock
        self._committed = committed
        self._changed = asyncio.Condition()
        self._generation = 0  # bumped on every change; watchers wait for a bump
        self._closed = False

    async def close(self) -> None:
        """Ends every watch stream."""
        self._closed = True
        async with self._changed:
            self._generation += 1
            self._changed.notify_all()

    async def get(self, approval_id: str) -> Approval:
        """One approval request (expired ones report EXPIRED even before the sweeper)."""
        require_text("approval_id", approval_id, max_length=64, required=True)
        found = await self.store.get_approval(approval_id)
        if found is None:
            raise NotFound("approval", approval_id)
        if found.status is ApprovalStatus.PENDING and found.expires_at <= self.clock():
            return await self._settle(approval_id, ApprovalStatus.EXPIRED, "", "expired")
        return found

    async def list(
        self,
        status: ApprovalStatus | None,
        size: int = 0,
        token: str = "",
        size_of: Callable[[Approval], int] = lambda _: 0,
    ) -> tuple[list[Approval], str]:
        """One page of approval requests, newest first, and the next page's token.

        `size_of` tells an item's encoded size in the reply; the page ends early rather than
        exceed `pagination.MAX_PAGE_BYTES`.
        """
        limit = page_size(size)
        position = decode_token(token)
        before = position.get("before") if position else None
        if before is not None and not isinstance(before, int):
            raise InvalidArgument("page_token", "is not a token this service issued")
        rows = await self.store.list_approvals(status, before, limit + 1)
        page, more = take_page(rows, limit, lambda row: size_of(row[1]))
        next_token = encode_token({"before": page[-1][0]}) if more else ""
        return [a for _, a in page], next_token

    async def approve(self, approval_id: str, approver: str, reason: str = "") -> Approval:
        """Approves a pending request."""
        return await self._decide(approval_id, ApprovalStatus.APPROVED, approver, reason)

    async def reject(self, approval_id: str, approver: str, reason: str = "") -> Approval:
        """Rejects a pending request."""
        return await self._decide(approval_id, ApprovalStatus.REJECTED, approver, reason)

    async def _decide(
        self, approval_id: str, status: ApprovalStatus, approver: str, reason: str
    ) -> Approval:
        require_text("approval_id", approval_id, max_length=64, required=True)
        require_text("approver", approver, max_length=MAX_APPROVER_LENGTH, required=True)
        require_text("reason", reason, max_length=MAX_REASON_LENGTH)
        current = await self.get(approval_id)
        if current.status.settled:
            raise FailedPrecondition(
                f"approval {approval_id!r} is already {current.status.value}",
                reason="APPROVAL_SETTLED",
                metadata={"status": current.status.value},
            )
        if status is ApprovalStatus.APPROVED and approver == current.request.actor:
            raise FailedPrecondition(
                f"approver {approver!r} asked for this request; someone else must approve it",
                reason="SELF_APPROVAL",
            )
        return await self._settle(approval_id, status, approver, reason)

    async def _settle(
        self, approval_id: str, status: ApprovalStatus, approver: str, reason: str
    ) -> Approval:
        async with self._lock, self.store.db.transaction() as conn:
            current = await self.store.get_approval(approval_id, conn)
            if current is None:
                raise NotFound("approval", approval_id)
            if current.status.settled:
                if status is ApprovalStatus.EXPIRED:
                    return current
                raise FailedPrecondition(
                    f"approval {approval_id!r} is already {current.status.value}",
                    reason="APPROVAL_SETTLED",
                )
            settled = replace(
                current,
                status=status,
                decided_by=approver,
                decision_reason=reason,
                decided_at=self.clock(),
            )
            await self.store.save_approval(conn, settled)
            data = approval_to_json(settled)
            event_type = f"governance.approval.{status.value}"
            await self.events.enqueue(conn, event_type, data, subject=approval_id)
            await self.log_entries.enqueue(conn, event_type, data, subject=approval_id)
        self._committed()
        async with self._changed:
            self._generation += 1
            self._changed.notify_all()
        return settled

    async def watch(self, approval_id: str) -> AsyncIterator[Approval]:
        """The approval request now, then after every change, until it is settled."""
        seen = self._generation
        current = await self.get(approval_id)
        yield current
        while not current.status.settled and not self._closed:
            remaining = max(0.0, current.expires_at - self.clock())
            async with self._changed:
                last = seen

                def bumped(last: int = last) -> bool:
                    return self._generation != last

                # Wake at the deadline too, so the watcher sees EXPIRED without a sweep.
                # asyncio.timeout, not wait_for: see services.common.waiting.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, 60.0)):
                        await self._changed.wait_for(bumped)
                seen = self._generation
            latest = await self.get(approval_id)
            if latest != current:
                current = latest
                yield current

    async def expire_due(self) -> int:
        """Marks every pending request past its deadline EXPIRED; returns how many."""
        due = await self.store.expired_approvals(self.clock())
        for approval_id in due:
            await self._settle(approval_id, ApprovalStatus.EXPIRED, "", "expired")
        return len(due)

    async def run_sweeper(self, interval_s: float) -> None:
        """Expires approvals forever; cancel to stop."""
        while True:
            try:
                await self.expire_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("governance: approval sweep failed")
            await asyncio.sleep(interval_s)
