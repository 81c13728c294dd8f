"""The governance core: policy CRUD, evaluation, the decision record and approvals.

Plain Python over `GovernanceStore`; the servicer adapts it to gRPC. Every decision and
every approval change is written in one transaction together with its announcement in
two outboxes: one for the event bus (`governance.decision`, `governance.approval.*`) and
one for the immutable log, so neither is lost while its peer is down.

Policies and the mode are kept in memory too, for reads and evaluation. A change to them,
once begun, ends even when its caller goes away (`runs_to_completion`): a policy stored
but not in memory would not be enforced, and its retry would say AlreadyExists; a deleted
one would stay enforced, until a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from services.common.completion import runs_to_completion
from services.common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from services.common.outbox import Outbox
from services.common.pagination import decode_token, encode_token, page_size, take_page
from services.common.validation import require_id, require_text
from services.kernels.governance import store as tables
from services.kernels.governance.approvals import ApprovalQueue
from services.kernels.governance.model import (
    Approval,
    ApprovalStatus,
    Decision,
    Effect,
    Mode,
    Policy,
    Request,
    RiskLevel,
    Verdict,
)
from services.kernels.governance.policy import DEFAULT_EFFECTS, evaluate, validate_policy
from services.kernels.governance.policy_codec import read_policy_file
from services.kernels.governance.recorder import DecisionRecorder
from services.kernels.governance.store import DecisionFilter, GovernanceStore

log = logging.getLogger(__name__)

MAX_ACTOR_LENGTH = 256
MAX_ACTION_LENGTH = 512
MAX_RESOURCE_LENGTH = 512
MAX_REQUEST_ID_LENGTH = 128
MAX_REASON_LENGTH = 1024
_MODE_KEY = "mode"

Clock = Callable[[], float]


@dataclass(frozen=True)
class GovernanceSettings:
    """How governance decides.

    Attributes:
        mode: Global mode to apply at start; None keeps the persisted one (LOG_ONLY on a
            fresh store, as seed 004 rolls out).
        defaults: Effect per risk level when no enforcing policy matches (ENFORCE mode).
        default_risk: Risk level of requests that give none.
        fail_closed_at: From this risk level up, a policy that fails to evaluate forbids.
        approval_ttl_s: How long an approval request waits before it expires.
        policy_file: Policies to load (create or update) at start; None loads none.
    """

    mode: Mode | None = None
    defaults: Mapping[RiskLevel, Effect] = field(default_factory=lambda: dict(DEFAULT_EFFECTS))
    default_risk: RiskLevel = RiskLevel.MEDIUM
    fail_closed_at: RiskLevel = RiskLevel.HIGH
    approval_ttl_s: float = 3600.0
    policy_file: Path | None = None


@dataclass(frozen=True)
class Stats:
    """Counts for GetGovernanceStats."""

    mode: Mode
    policies: int
    decisions_by_verdict: dict[str, int]
    would_have_blocked: int
    approvals_by_status: dict[str, int]
    log_backlog: int


class Governance:
    """Policies, decisions and approvals.

    Args:
        store: Durable state.
        settings: Decision settings.
        clock: Epoch seconds; injectable for tests.
    """

    def __init__(
        self, store: GovernanceStore, settings: GovernanceSettings, clock: Clock = time.time
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.events = Outbox(store.db, tables.events_outbox, "governance")
        self.log_entries = Outbox(store.db, tables.log_outbox, "governance")
        self.mode = settings.mode or Mode.LOG_ONLY
        self._policies: dict[str, Policy] = {}
        self._lock = asyncio.Lock()
        self._on_commit: list[Callable[[], None]] = []
        self.recorder = DecisionRecorder(store, self.events, self.log_entries, self._committed)
        self.approvals = ApprovalQueue(
            store, self.events, self.log_entries, self._lock, clock, self._committed
        )

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Calls `callback` after every commit that enqueued events (wakes the relays)."""
        self._on_commit.append(callback)

    def _committed(self) -> None:
        for callback in self._on_commit:
            callback()

    async def open(self) -> None:
        """Opens the store, restores the mode and policies, loads the policy file."""
        await self.store.open()
        self.recorder.start()
        stored = await self.store.get_setting(_MODE_KEY)
        if self.settings.mode is not None:
            self.mode = self.settings.mode
            await self.store.set_setting(_MODE_KEY, self.mode.value)
        elif stored:
            self.mode = Mode(stored)
        self._policies = {p.policy_id: p for p in await self.store.load_policies()}
        if self.settings.policy_file is not None:
            await self.load_file(self.settings.policy_file)
        log.info("governance: %d policies, mode %s", len(self._policies), self.mode.value)

    async def close(self) -> None:
        """Ends every watch stream (shutdown begins; calls in flight may still finish)."""
        await self.approvals.close()

    async def stop(self) -> None:
        """Writes what the recorder holds and stops it (after the drain)."""
        await self.approvals.close()
        await self.recorder.stop()

    # Policies -------------------------------------------------------------------------

    async def load_file(self, path: Path) -> int:
        """Creates or updates the policies of a file; returns how many changed. Policies
        not in the file are left alone."""
        changed = 0
        for policy in read_policy_file(path):
            current = self._policies.get(policy.policy_id)
            if current is None:
                await self.create_policy(policy)
            elif validate_policy(policy).body() != current.body():
                await self.update_policy(policy)
            else:
                continue
            changed += 1
        log.info("governance: loaded %s (%d policies changed)", path, changed)
        return changed

    @runs_to_completion
    async def create_policy(self, policy: Policy) -> Policy:
        """Stores a new policy at version 1 (or one past a deleted one's last version)."""
        policy = validate_policy(policy)
        async with self._lock, self.store.db.transaction() as conn:
            if await self.store.get_policy(conn, policy.policy_id) is not None:
                raise AlreadyExists("policy", policy.policy_id)
            now = self.clock()
            version = await self.store.last_version(conn, policy.policy_id) + 1
            stored = replace(policy, version=version, created_at=now, updated_at=now)
            await self.store.write_policy(conn, stored, created=True)
            await self._announce(conn, "governance.policy.created", stored)
        self._policies[stored.policy_id] = stored
        self._committed()
        return stored

    @runs_to_completion
    async def update_policy(self, policy: Policy, expected_version: int = 0) -> Policy:
        """Replaces a policy with a new version."""
        policy = validate_policy(policy)
        async with self._lock, self.store.db.transaction() as conn:
            current = await self.store.get_policy(conn, policy.policy_id)
            if current is None:
                raise NotFound("policy", policy.policy_id)
            if expected_version and expected_version != current.version:
                raise Aborted(
                    f"policy {policy.policy_id!r} is at version {current.version}, "
                    f"not {expected_version}",
                    reason="VERSION_MISMATCH",
                )
            stored = replace(
                policy,
                version=current.version + 1,
                created_at=current.created_at,
                updated_at=self.clock(),
            )
            await self.store.write_policy(conn, stored, created=False)
            await self._announce(conn, "governance.policy.updated", stored)
        self._policies[stored.policy_id] = stored
        self._committed()
        return stored

    @runs_to_completion
    async def delete_policy(self, policy_id: str) -> int:
        """Deletes a policy; returns the version it had."""
        require_id("policy_id", policy_id)
        async with self._lock, self.store.db.transaction() as conn:
            current = await self.store.get_policy(conn, policy_id)
            if current is None:
                raise NotFound("policy", policy_id)
            await self.store.delete_policy(conn, current, self.clock())
            await self._announce(conn, "governance.policy.deleted", current)
        self._policies.pop(policy_id, None)
        self._committed()
        return current.version

    async def _announce(self, conn: Any, event_type: str, policy: Policy) -> None:
        data = {**policy.body(), "version": policy.version}
        await self.events.enqueue(conn, event_type, data, subject=policy.policy_id)
        await self.log_entries.enqueue(conn, event_type, data, subject=policy.policy_id)

    def get_policy(self, policy_id: str) -> Policy:
        """The current version of a policy."""
        require_id("policy_id", policy_id)
        found = self._policies.get(policy_id)
        if found is None:
            raise NotFound("policy", policy_id)
        return found

    def list_policies(
        self, size: int = 0, token: str = "", size_of: Callable[[Policy], int] = lambda _: 0
    ) -> tuple[list[Policy], str]:
        """One page of policies by id, and the next page's token.

        `size_of` tells an item's encoded size in the reply; the page ends early rather than
        exceed `pagination.MAX_PAGE_BYTES`.
        """
        limit = page_size(size)
        position = decode_token(token)
        after = str(position.get("after", "")) if position else ""
        ordered = sorted(p for p in self._policies if p > after)
        page, more = take_page([self._policies[p] for p in ordered[: limit + 1]], limit, size_of)
        next_token = encode_token({"after": page[-1].policy_id}) if more else ""
        return page, next_token

    @runs_to_completion
    async def set_mode(self, mode: Mode) -> Mode:
        """Sets and persists the global mode.

        The mode and its announcement are one transaction (a crash keeps both or neither),
        and changes run one at a time, so each announces the mode it replaced."""
        async with self._lock, self.store.db.transaction() as conn:
            previous = self.mode
            await self.store.write_setting(conn, _MODE_KEY, mode.value)
            data = {"mode": mode.value, "previous": previous.value}
            await self.events.enqueue(conn, "governance.mode.changed", data)
            await self.log_entries.enqueue(conn, "governance.mode.changed", data)
        self.mode = mode  # no await since the commit: the next change sees this mode
        log.warning("governance: mode %s -> %s", previous.value, mode.value)
        self._committed()
        return mode

    # Evaluation -----------------------------------------------------------------------

    async def evaluate(
        self,
        actor: str,
        action: str,
        resource: str = "",
        context: Mapping[str, Any] | None = None,
        risk_level: RiskLevel | None = None,
        request_id: str = "",
    ) -> tuple[Decision, bool]:
        """Decides on a request and records the decision; returns it and whether it is
        the replay of an earlier call with the same request id."""
        request = Request(
            actor=require_text("actor", actor, max_length=MAX_ACTOR_LENGTH, required=True),
            action=require_text("action", action, max_length=MAX_ACTION_LENGTH, required=True),
            resource=require_text("resource", resource, max_length=MAX_RESOURCE_LENGTH),
            risk_level=risk_level or self.settings.default_risk,
            context=dict(context or {}),
        )
        request_id = require_text("request_id", request_id, max_length=MAX_REQUEST_ID_LENGTH)
        if request_id:
            async with self.store.db.read() as conn:
                earlier = await self.store.decision_by_request(conn, actor, request_id)
            if earlier is not None:
                return earlier, True
        evaluation = evaluate(
            list(self._policies.values()),
            request,
            mode=self.mode,
            defaults=self.settings.defaults,
            fail_closed_at=self.settings.fail_closed_at,
        )
        now = self.clock()
        decision = Decision(
            decision_id=str(uuid.uuid4()),
            request=request,
            evaluation=evaluation,
            mode=self.mode,
            time=now,
            request_id=request_id,
            approval_id=(
                str(uuid.uuid4()) if evaluation.verdict is Verdict.PENDING_APPROVAL else ""
            ),
        )
        approval = None
        if decision.approval_id:
            approval = Approval(
                approval_id=decision.approval_id,
                decision_id=decision.decision_id,
                request=request,
                policy_ids=evaluation.policy_ids,
                reasons=evaluation.reasons,
                status=ApprovalStatus.PENDING,
                created_at=now,
                expires_at=now + self.settings.approval_ttl_s,
            )
        recorded, replayed = await self.recorder.record(decision, approval)
        if replayed:
            return recorded, True
        if (
            decision.verdict is not Verdict.ALLOW
            or evaluation.evaluated_verdict is not Verdict.ALLOW
        ):
            log.info(
                "governance: %s %s on %r by %r (%s)",
                decision.verdict.value,
                request.action,
                request.resource,
                request.actor,
                "; ".join(evaluation.reasons),
            )
        return decision, False

    async def get_decision(self, decision_id: str) -> Decision:
        """One recorded decision."""
        require_text("decision_id", decision_id, max_length=64, required=True)
        found = await self.store.get_decision(decision_id)
        if found is None:
            raise NotFound("decision", decision_id)
        return found

    async def redeem(
        self, decision_id: str, actor: str, action: str, resource: str, request_sha256: str = ""
    ) -> tuple[Decision, float]:
        """Redeems a decision once for the request it was made for; returns it and when.

        Raises:
            NotFound: No such decision.
            PermissionDenied: It was made for another actor, action, resource or request.
            FailedPrecondition: It does not allow the request (denied, still pending,
                rejected, expired) or it was redeemed before.
        """
        require_text("actor", actor, max_length=MAX_ACTOR_LENGTH, required=True)
        require_text("action", action, max_length=MAX_ACTION_LENGTH, required=True)
        require_text("resource", resource, max_length=MAX_RESOURCE_LENGTH)
        require_text("request_sha256", request_sha256, max_length=64)
        decision = await self.get_decision(decision_id)
        request = decision.request
        recorded_digest = str(request.context.get("request_sha256") or "")
        mismatch = [
            name
            for name, asked, made in (
                ("actor", actor, request.actor),
                ("action", action, request.action),
                ("resource", resource, request.resource),
                ("request_sha256", request_sha256, recorded_digest or request_sha256),
            )
            if asked != made
        ]
        if mismatch:
            raise PermissionDenied(
                f"decision {decision_id} was made for another request "
                f"(different {', '.join(mismatch)})",
                reason="DECISION_MISMATCH",
            )
        if decision.verdict is Verdict.DENY:
            raise FailedPrecondition(
                f"decision {decision_id} denied {request.action}; it cannot be redeemed",
                reason="DECISION_DENIED",
            )
        if decision.verdict is Verdict.PENDING_APPROVAL:
            approval = await self.approvals.get(decision.approval_id)
            if approval.status is not ApprovalStatus.APPROVED:
                raise FailedPrecondition(
                    f"approval {approval.approval_id} of decision {decision_id} is "
                    f"{approval.status.value.lower()}, not approved",
                    reason=f"APPROVAL_{approval.status.value.upper()}",
                    metadata={"decision_id": decision_id, "approval_id": approval.approval_id},
                )
        now = self.clock()
        async with self._lock, self.store.db.transaction() as conn:
            earlier = await self.store.redeem(conn, decision_id, now, request_sha256)
            if earlier is None:
                data = {
                    "decision_id": decision_id,
                    "approval_id": decision.approval_id,
                    "actor": actor,
                    "action": action,
                    "resource": resource,
                }
                await self.events.enqueue(
                    conn, "governance.decision.redeemed", data, subject=decision_id
                )
                await self.log_entries.enqueue(
                    conn, "governance.decision.redeemed", data, subject=decision_id
                )
        if earlier is not None:
            raise FailedPrecondition(
                f"decision {decision_id} was already redeemed; a new request needs a new decision",
                reason="DECISION_REDEEMED",
            )
        self._committed()
        return decision, now

    async def list_decisions(
        self,
        where: DecisionFilter,
        size: int = 0,
        token: str = "",
        size_of: Callable[[Decision], int] = lambda _: 0,
    ) -> tuple[list[Decision], str]:
        """One page of decisions, newest first, and the next page's token.

        `size_of` tells an item's encoded size in the reply; the page ends early rather than
        exceed `pagination.MAX_PAGE_BYTES`.
        """
        limit = page_size(size)
        position = decode_token(token)
        before = position.get("before") if position else None
        if before is not None and not isinstance(before, int):
            raise InvalidArgument("page_token", "is not a token this service issued")
        rows = await self.store.list_decisions(where, before, limit + 1)
        page, more = take_page(rows, limit, lambda row: size_of(row[1]))
        next_token = encode_token({"before": page[-1][0]}) if more else ""
        return [d for _, d in page], next_token

    # Approvals ------------------------------------------------------------------------

    async def stats(self) -> Stats:
        """Counts for GetGovernanceStats."""
        by_verdict, would = await self.store.decision_counts()
        return Stats(
            mode=self.mode,
            policies=len(self._policies),
            decisions_by_verdict=by_verdict,
            would_have_blocked=would,
            approvals_by_status=await self.store.approval_counts(),
            log_backlog=await self.log_entries.count(),
        )
