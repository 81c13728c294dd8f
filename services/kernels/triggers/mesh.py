"""The trigger mesh: matches events to rules, claims firings, runs them through the
validators and fires their actions.

Contract:
- `observe` is called for every delivered event. It evaluates every rule and claims one
  firing per applicable rule in one transaction (claims and outcomes are group-committed,
  see `services.kernels.triggers.writer`); only after it returns does the mesh acknowledge
  the event, so a crash before the commit means a redelivery and a crash after it a
  duplicate claim that does nothing: exactly once per (event, rule).
- `run` takes due firings (leased, so one instance runs an attempt) and attempts each:
  1. the trust scorer: when the rule asks for a minimum, the event's source domain must
     have at least that trust score (from the trust kernel), else the firing is REFUSED;
  2. the governance validator (seed 004's `set_governance_validator`): governance decides
     on the event's actor (`data.actor` when the event names one, else its source domain),
     its action (the event type) and the resource the rule touches; a refusal is DENIED;
  3. the action, with an idempotency key derived from the firing (a retried attempt starts
     the workflow or runs the domain action once).
  A failed action is retried with backoff up to the rule's `max_attempts`, then
  DEAD_LETTERED. Every outcome is recorded with its event (`trigger.fired`,
  `trigger.refused`, `trigger.denied`, `trigger.dead_lettered`, `trigger.retrying`) and an
  immutable-log entry, both written through outboxes in the outcome's transaction.
- A rule's change, once begun, ends even when its caller goes away (`runs_to_completion`):
  a rule stored but not in `rules` would never fire, and a deleted one would keep firing,
  until a restart.
- The clock is injected, and `drain` runs the due firings once, so the contract is testable
  without real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from services.common.action_peers import ActionFailed, Peers
from services.common.backoff import Backoff
from services.common.completion import runs_to_completion
from services.common.errors import Aborted, NotFound
from services.common.governance_client import GovernanceGate
from services.common.outbox import Outbox
from services.kernels.triggers.model import (
    ActionKind,
    Firing,
    FiringState,
    Rule,
    firing_id,
    parse_rule,
)
from services.kernels.triggers.store import TriggersStore
from services.kernels.triggers.writer import Claims, Outcome

log = logging.getLogger(__name__)

OUTCOME_EVENTS = {
    FiringState.SUCCEEDED: "trigger.fired",
    FiringState.REFUSED: "trigger.refused",
    FiringState.DENIED: "trigger.denied",
    FiringState.DEAD_LETTERED: "trigger.dead_lettered",
    FiringState.PENDING: "trigger.retrying",
}
LATENCY_WINDOW = 4096


class TrustScorer(Protocol):
    """The trust kernel's view of a domain."""

    async def score(self, domain_id: str) -> float:
        """The domain's trust score in [0, 1]. Raises ActionFailed when it cannot be read."""


@dataclass(frozen=True)
class MeshSettings:
    """How the mesh runs.

    Attributes:
        lease_s: How long a taken firing is this instance's (longer than an action's deadline).
        poll_interval_s: Longest sleep between passes (firings from other instances).
        batch: Firings taken per pass.
        max_concurrent: Firings attempted at once.
        retry: Delay before the next attempt of a failed firing.
        tasks_domain: The domain whose `run_cycle` task actions call.
    """

    lease_s: float = 60.0
    poll_interval_s: float = 1.0
    batch: int = 200
    max_concurrent: int = 32
    retry: Backoff = field(
        default_factory=lambda: Backoff(initial_s=1.0, factor=2.0, max_s=60.0, jitter=0.2)
    )
    tasks_domain: str = "tasks"


def event_actor(event: Mapping[str, Any]) -> str:
    """Who governance sees acting: the event's `data.actor`, else its source domain."""
    data = event.get("data")
    actor = data.get("actor") if isinstance(data, Mapping) else None
    return actor if isinstance(actor, str) and actor else str(event.get("source", ""))


class TriggerMesh:
    """Rules, claims and firings (see the module docstring).

    Args:
        store: Durable state.
        gate: The governance validator.
        trust: The trust scorer.
        peers: Runs workflow, domain and task actions.
        events: Outbox of bus events.
        log_entries: Outbox of immutable-log entries.
        wake_relays: Called after outbox writes.
        settings: Loop settings.
        clock: Epoch seconds.
    """

    def __init__(
        self,
        store: TriggersStore,
        gate: GovernanceGate,
        trust: TrustScorer,
        peers: Peers,
        events: Outbox,
        log_entries: Outbox,
        wake_relays: Callable[[], None] = lambda: None,
        settings: MeshSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.gate = gate
        self.trust = trust
        self.peers = peers
        self.events = events
        self.log_entries = log_entries
        self.wake_relays = wake_relays
        self.settings = settings or MeshSettings()
        self.clock = clock
        self.rules: dict[str, Rule] = {}
        self._wake = asyncio.Event()
        self._running: set[str] = set()
        self._ready: list[Firing] = []
        self._dispatch: Callable[[Sequence[Firing]], None] | None = None
        self.latencies_s: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.on_rules_changed: Callable[[Sequence[str]], None] = lambda _patterns: None

    # Rules

    async def load(self, file_rules: Sequence[Rule] = ()) -> None:
        """Reads the stored rules and merges the file's: a file rule that differs from the
        stored one becomes its next version; rules from the file are never deleted here."""
        now = self.clock()
        async with self.store.db.transaction() as conn:
            for rule in file_rules:
                version, deleted = await self.store.current_version(conn, rule.rule_id)
                stored = None if deleted else await self.store.get_rule(rule.rule_id)
                if stored is not None and _same(stored, rule):
                    continue
                await self.store.write_rule(
                    conn, replace(rule, version=version + 1, origin="file"), deleted=False, now=now
                )
        self.rules = {r.rule_id: r for r in await self.store.rules()}
        self.on_rules_changed(self.patterns())

    def patterns(self) -> list[str]:
        """The event patterns of the enabled rules."""
        return sorted({r.pattern for r in self.rules.values() if r.enabled})

    @runs_to_completion
    async def put_rule(self, data: Mapping[str, Any], expected_version: int = 0) -> Rule:
        """Creates or updates a rule from plain data; `expected_version` (when not 0) must
        be the stored version (compare-and-set), 0 creates or overwrites."""
        rule = parse_rule({k: v for k, v in data.items() if k not in ("version", "origin")})
        now = self.clock()
        async with self.store.db.transaction() as conn:
            version, deleted = await self.store.current_version(conn, rule.rule_id)
            live = 0 if deleted else version
            if expected_version and expected_version != live:
                raise Aborted(
                    f"rule {rule.rule_id} is at version {live}, not {expected_version}",
                    reason="VERSION_MISMATCH",
                )
            rule = replace(rule, version=version + 1, origin="api")
            await self.store.write_rule(conn, rule, deleted=False, now=now)
            await self._announce(conn, "trigger.rule_changed", rule.rule_id, rule.to_json())
        self.wake_relays()
        self.rules[rule.rule_id] = rule
        self.on_rules_changed(self.patterns())
        return rule

    @runs_to_completion
    async def delete_rule(self, rule_id: str, expected_version: int = 0) -> Rule:
        """Deletes a rule (its firings stay); returns the deleted version."""
        now = self.clock()
        async with self.store.db.transaction() as conn:
            version, deleted = await self.store.current_version(conn, rule_id)
            current = None if deleted else await self.store.get_rule(rule_id)
            if current is None:
                raise NotFound("rule", rule_id)
            if expected_version and expected_version != version:
                raise Aborted(
                    f"rule {rule_id} is at version {version}, not {expected_version}",
                    reason="VERSION_MISMATCH",
                )
            gone = replace(current, version=version + 1)
            await self.store.write_rule(conn, gone, deleted=True, now=now)
            await self._announce(
                conn, "trigger.rule_deleted", rule_id, {"rule_id": rule_id, "version": gone.version}
            )
        self.wake_relays()
        self.rules.pop(rule_id, None)
        self.on_rules_changed(self.patterns())
        return gone

    # Events

    async def observe(self, event: dict[str, Any]) -> list[str]:
        """Claims the firings of one event (see the module docstring); returns the ids of
        the firings this call created (empty for a redelivery)."""
        applicable = [r for r in self.rules.values() if r.applies_to(event)]
        if not applicable:
            return []
        claims = Claims(
            event,
            tuple((firing_id(str(event["id"]), rule.rule_id), rule) for rule in applicable),
            self.clock(),
            self.settings.lease_s,
        )
        created = await self.store.writer.claim(claims)
        if created:
            # Claimed with a lease: attempted at once by this instance, with no second read
            # and without waiting for the run loop's next pass.
            self._running.update(f.firing_id for f in created)
            if self._dispatch is not None:
                self._dispatch(created)
            else:
                self._ready.extend(created)
        return [f.firing_id for f in created]

    # Firings

    def wake(self) -> None:
        """Starts a pass now."""
        self._wake.set()

    async def run(self) -> None:
        """Attempts firings until cancelled: fresh claims at once, and retries and lapsed
        leases (from this or another instance) read every poll interval or when woken."""
        limit = asyncio.Semaphore(self.settings.max_concurrent)
        pending: set[asyncio.Task[None]] = set()

        async def attempt(firing: Firing) -> None:
            async with limit:
                try:
                    await self.attempt(firing)
                except Exception:
                    log.exception("triggers: firing %s failed unexpectedly", firing.firing_id)
                finally:
                    self._running.discard(firing.firing_id)

        def dispatch(firings: Sequence[Firing]) -> None:
            for firing in firings:
                task = asyncio.create_task(attempt(firing))
                pending.add(task)
                task.add_done_callback(pending.discard)

        ready, self._ready = self._ready, []
        dispatch(ready)
        self._dispatch = dispatch
        try:
            while True:
                self._wake.clear()
                try:
                    dispatch(await self._take())
                except Exception:
                    log.exception("triggers: could not read due firings")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.settings.poll_interval_s)
        finally:
            self._dispatch = None
            for task in pending:
                task.cancel()

    async def _take(self) -> list[Firing]:
        ready, self._ready = self._ready, []
        taken = await self.store.take_due(self.clock(), self.settings.lease_s, self.settings.batch)
        fresh = [f for f in taken if f.firing_id not in self._running]
        self._running.update(f.firing_id for f in fresh)
        return ready + fresh

    async def drain(self) -> int:
        """Attempts every firing due now, one pass, in this task; returns how many."""
        taken = await self._take()
        try:
            await asyncio.gather(*(self.attempt(f) for f in taken))
        finally:
            self._running.difference_update(f.firing_id for f in taken)
        return len(taken)

    async def attempt(self, firing: Firing) -> FiringState:
        """One attempt of a taken firing; returns the state it ends in."""
        rule = self.rules.get(firing.rule_id)
        event = dict(firing.event)
        attempts = firing.attempts + 1
        if rule is None:
            return await self._finish(
                firing, FiringState.DEAD_LETTERED, attempts, {"error": "the rule was deleted"}
            )
        source = str(event.get("source", ""))
        if rule.min_trust > 0:
            try:
                score = await self.trust.score(source)
            except ActionFailed as exc:
                return await self._failed(firing, rule, attempts, f"trust: {exc}")
            if score < rule.min_trust:
                return await self._finish(
                    firing,
                    FiringState.REFUSED,
                    attempts,
                    {"reason": "trust", "source": source, "score": score, "min": rule.min_trust},
                )
        decision = await self.gate.check(
            event_actor(event),
            str(event.get("type", "")),
            rule.resource(),
            risk_level=rule.risk_level,
            context={"rule_id": rule.rule_id, "event_id": event.get("id", ""), "via": "triggers"},
            request_id=f"trigger-{firing.firing_id}",
        )
        if not decision.allowed:
            return await self._finish(
                firing,
                FiringState.DENIED,
                attempts,
                {
                    "reason": "governance",
                    "verdict": decision.verdict,
                    "decision_id": decision.decision_id,
                    "reasons": list(decision.reasons),
                },
            )
        data = rule.action_input(event)
        key = f"trigger-{firing.firing_id}"
        emitted: tuple[str, str, dict[str, Any]] | None = None
        try:
            if rule.action is ActionKind.WORKFLOW:
                result = await self.peers.start_workflow(rule.target["workflow_id"], data, key)
            elif rule.action is ActionKind.DOMAIN:
                result = await self.peers.call_domain(dict(rule.target), data, key)
            elif rule.action is ActionKind.TASK:
                reason = rule.target.get("reason") or f"rule {rule.rule_id} on {event.get('type')}"
                result = await self.peers.call_domain(
                    {"domain_id": self.settings.tasks_domain, "action": "run_cycle"},
                    {"reason": reason, "event": event},
                    key,
                )
            else:
                emitted = (rule.target["event_type"], rule.target.get("subject", ""), data)
                result = {"event_type": rule.target["event_type"]}
        except ActionFailed as exc:
            return await self._failed(firing, rule, attempts, str(exc))
        state = await self._finish(firing, FiringState.SUCCEEDED, attempts, result, emitted)
        self.latencies_s.append(max(0.0, self.clock() - firing.created_at))
        return state

    async def _failed(self, firing: Firing, rule: Rule, attempts: int, error: str) -> FiringState:
        if attempts >= rule.max_attempts:
            return await self._finish(firing, FiringState.DEAD_LETTERED, attempts, {"error": error})
        delay = self.settings.retry.delay(attempts)
        return await self._finish(
            firing, FiringState.PENDING, attempts, {"error": error}, next_at=self.clock() + delay
        )

    async def _finish(
        self,
        firing: Firing,
        state: FiringState,
        attempts: int,
        result: dict[str, Any],
        emitted: tuple[str, str, dict[str, Any]] | None = None,
        *,
        next_at: float = 0.0,
    ) -> FiringState:
        now = self.clock()
        announcement = {
            "firing_id": firing.firing_id,
            "rule_id": firing.rule_id,
            "rule_version": firing.rule_version,
            "event_id": firing.event.get("id", ""),
            "event_type": firing.event.get("type", ""),
            "source": firing.event.get("source", ""),
            "state": state.value,
            "attempts": attempts,
            "result": result,
        }
        events: list[dict[str, Any]] = []
        if emitted is not None:
            event_type, subject, data = emitted
            events.append(
                self.events.new_row(
                    event_type, data, subject=subject, event_id=f"trigger-{firing.firing_id}"
                )
            )
        outcome_event = OUTCOME_EVENTS[state]
        events.append(self.events.new_row(outcome_event, announcement, subject=firing.rule_id))
        log_entry = self.log_entries.new_row(outcome_event, announcement, subject=firing.rule_id)
        outcome = Outcome(firing, state, attempts, next_at or now, result, now, events, [log_entry])
        if not await self.store.writer.record(outcome):
            return state  # another instance finished it first
        self.wake_relays()  # after the commit, so the relays find the rows
        if state is FiringState.PENDING:
            self._wake.set()
        return state

    async def _announce(
        self, conn: Any, event_type: str, subject: str, data: dict[str, Any]
    ) -> None:
        await self.events.enqueue(conn, event_type, data, subject=subject)
        await self.log_entries.enqueue(conn, event_type, data, subject=subject)


def _same(a: Rule, b: Rule) -> bool:
    left, right = a.to_json(), b.to_json()
    for key in ("version", "origin"):
        left.pop(key)
        right.pop(key)
    return left == right
