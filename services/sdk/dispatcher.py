"""The core of a domain: runs actions, compensations and event handlers.

Plain Python, testable without gRPC. The dispatcher looks up the declared function,
bounds concurrency, measures every call, and makes calls with an idempotency key
exactly-once in effect: the first successful result is stored durably and returned to
every later call with the same key (even after a restart), and a call that arrives while
the first is still running waits for it instead of running the action a second time.
A failed call stores nothing, so a retry with the same key runs the action again.

A run belongs to the domain, not to the caller: when the caller goes away mid-call (its
RPC is cancelled), the function still runs to its end and its result is stored for the
caller's retry. A run is marked started durably before the function is called; if the
domain process dies before the run ends, a later call with the key answers
FAILED_PRECONDITION (reason IDEMPOTENCY_KEY_INTERRUPTED) instead of running the function a
second time, because whether the first run had its effect is unknown (at most once),
unless the action is declared `rerun_if_interrupted` (its effects are keyed on the
idempotency key); compensations, idempotent in effect by contract, always run again.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format, struct_pb2
from opentelemetry import trace

from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.sdk.context import Context, Drop, Event, EventSink, Outcome, Retry
from services.sdk.memory import MemoryClient
from services.sdk.metrics import CallMetrics
from services.sdk.outcomes import OutcomeRecorder
from services.sdk.store import MAX_KEY_LENGTH, KeyValueStore, ResultStore
from services.sdk.tracing import current_traceparent

if TYPE_CHECKING:
    from services.sdk.domain import Domain

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("services.sdk")

EXECUTE = "execute"
COMPENSATE = "compensate"
# Errors that are the caller's fault: they say nothing about the domain's health.
_CALLER_ERRORS = (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition)


@dataclass(frozen=True)
class Call:
    """One request to run an action or its compensation."""

    action: str
    input: dict[str, Any]
    workflow_id: str = ""
    execution_id: str = ""
    step_id: str = ""
    attempt: int = 1
    idempotency_key: str = ""
    traceparent: str = ""
    caller: str = ""
    """Who made the call, for the collaboration graph (see `call_metrics.caller_of`)."""


@dataclass(frozen=True)
class CallResult:
    """What a call returned; `replayed` when it is the stored result of an earlier call."""

    output: dict[str, Any]
    replayed: bool = False


@dataclass(frozen=True)
class Delivery:
    """The answer to a delivered event."""

    outcome: Outcome
    reason: str = ""
    retry_after_s: float | None = None


class Dispatcher:
    """Runs a `Domain`'s functions.

    Args:
        domain: The declared actions, compensations and handlers.
        results: Where first results are kept for replay.
        store: The key-value store handed to functions as `ctx.store`.
        memory: The shared memory client, scoped per call as `ctx.memory`.
        events: Where `ctx.publish` puts events; None when the bus is off.
        max_concurrency: Calls run at once; more wait for a slot.
        monotonic: Clock for latency (injectable for tests).
        outcomes: Where every action's outcome is recorded for the learning kernel;
            None records nothing.
    """

    def __init__(
        self,
        domain: Domain,
        results: ResultStore,
        store: KeyValueStore,
        memory: MemoryClient,
        events: EventSink | None,
        max_concurrency: int,
        monotonic: Callable[[], float] = time.monotonic,
        outcomes: OutcomeRecorder | None = None,
    ) -> None:
        self.domain = domain
        self.outcomes = outcomes
        self.results = results
        self.store = store
        self.memory = memory
        self.events = events
        self.metrics = CallMetrics(max_concurrency, domain.domain_id)
        self._slots = asyncio.Semaphore(max_concurrency)
        self._running: dict[tuple[str, str], asyncio.Task[CallResult]] = {}
        self._monotonic = monotonic

    async def execute(self, call: Call) -> CallResult:
        """Runs an action, or replays its stored result.

        Raises:
            NotFound: The action is not declared.
            InvalidArgument: The key is too long, or the action rejected its input.
            AlreadyExists: The key was used for another action.
        """
        spec = self.domain.actions.get(call.action)
        if spec is None:
            raise NotFound("action", call.action)
        function = spec.function

        async def run(ctx: Context) -> Mapping[str, Any] | None:
            return await function(ctx, dict(call.input))

        return await self._call(EXECUTE, call, run, rerun=spec.rerun_if_interrupted)

    async def compensate(self, call: Call, output: Mapping[str, Any]) -> CallResult:
        """Undoes a completed action, or replays the stored result of an earlier undo.

        An action declared without a compensation has nothing to undo: the answer is
        `{"compensated": false, "reason": ...}`.
        """
        spec = self.domain.actions.get(call.action)
        if spec is None:
            raise NotFound("action", call.action)
        undo = spec.compensation
        if undo is None:
            reason = f"action {call.action!r} declares no compensation: nothing to undo"
            return CallResult({"compensated": False, "reason": reason})

        async def run(ctx: Context) -> Mapping[str, Any] | None:
            return await undo(ctx, dict(call.input), dict(output))

        # Compensations are idempotent in effect by contract (see Domain.compensate): one
        # the domain stopped in the middle of is run again.
        return await self._call(COMPENSATE, call, run, rerun=True)

    async def deliver(
        self, event: Event, *, attempt: int = 1, pattern: str | None = None, traceparent: str = ""
    ) -> Delivery:
        """Hands an event to the handlers declared for it.

        Args:
            event: The event.
            attempt: Delivery attempt, 1 for the first.
            pattern: Pattern of the subscription that matched, when known: only that
                pattern's handlers run. None runs every handler whose pattern matches.
            traceparent: Trace context of the delivery (defaults to the producer's).

        Returns:
            ACK when every handler succeeded; RETRY when one asked for it or failed
            unexpectedly; DROP when one dropped it (and none asked to retry) or no
            handler matches.
        """
        handlers = self.domain.handlers_for(event.event_type, pattern)
        if not handlers:
            return Delivery(Outcome.DROP, f"no handler for event type {event.event_type!r}")
        ctx = self._context(
            f"event:{event.event_type}",
            Call(
                action="",
                input={},
                attempt=attempt,
                idempotency_key=f"event:{event.source_domain}:{event.id}",
                traceparent=traceparent or event.traceparent,
            ),
        )
        answers: list[Delivery] = []
        self.metrics.started()
        try:
            async with self._slots:
                for spec in handlers:
                    answers.append(await self._handle(spec.name, spec.function, ctx, event))
        finally:
            self.metrics.finished(0.0, success=None)
        retries = [a for a in answers if a.outcome is Outcome.RETRY]
        if retries:
            waits = [a.retry_after_s for a in retries if a.retry_after_s is not None]
            return Delivery(
                Outcome.RETRY,
                "; ".join(a.reason for a in retries if a.reason),
                max(waits, default=None),
            )
        drops = [a for a in answers if a.outcome is Outcome.DROP]
        if drops:
            return Delivery(Outcome.DROP, "; ".join(a.reason for a in drops if a.reason))
        return Delivery(Outcome.ACK)

    async def _handle(
        self,
        name: str,
        function: Callable[[Context, Event], Awaitable[Outcome | None]],
        ctx: Context,
        event: Event,
    ) -> Delivery:
        with _tracer.start_as_current_span(
            f"handle {event.event_type}",
            attributes={
                "grace.domain.id": self.domain.domain_id,
                "grace.handler": name,
                "messaging.destination.name": event.event_type,
                "messaging.message.id": event.id,
            },
        ) as span:
            delivery = await self._handle_untraced(name, function, ctx, event)
            span.set_attribute("grace.delivery.outcome", delivery.outcome.value)
            if delivery.outcome is not Outcome.ACK:
                span.set_status(trace.Status(trace.StatusCode.ERROR, delivery.reason))
            return delivery

    async def _handle_untraced(
        self,
        name: str,
        function: Callable[[Context, Event], Awaitable[Outcome | None]],
        ctx: Context,
        event: Event,
    ) -> Delivery:
        try:
            answer = await function(ctx, event)
        except Retry as retry:
            return Delivery(Outcome.RETRY, retry.reason, retry.after_s)
        except Drop as drop:
            return Delivery(Outcome.DROP, drop.reason)
        except Exception as exc:
            ctx.log.exception("handler %s failed on event %s", name, event.id)
            return Delivery(Outcome.RETRY, f"handler {name} failed: {type(exc).__name__}: {exc}")
        if answer is None or answer is Outcome.ACK:
            return Delivery(Outcome.ACK)
        if isinstance(answer, Outcome):
            return Delivery(answer, f"handler {name} answered {answer.value}")
        ctx.log.error("handler %s returned %r; expected None or an Outcome", name, answer)
        return Delivery(Outcome.RETRY, f"handler {name} returned {type(answer).__name__}")

    async def _call(
        self,
        kind: str,
        call: Call,
        run: Callable[[Context], Awaitable[Mapping[str, Any] | None]],
        *,
        rerun: bool,
    ) -> CallResult:
        # The action's span (a child of the DomainService server span); an error the action
        # raises marks it ERROR, which is what a failing workflow step shows in its trace.
        with _tracer.start_as_current_span(
            f"{kind} {call.action}",
            attributes={
                "grace.domain.id": self.domain.domain_id,
                "grace.step.action": call.action,
                "grace.workflow.id": call.workflow_id,
                "grace.execution.id": call.execution_id,
                "grace.step.id": call.step_id,
                "grace.step.attempt": call.attempt,
            },
        ) as span:
            result = await self._call_untraced(kind, call, run, rerun)
            span.set_attribute("grace.replayed", result.replayed)
            return result

    async def _call_untraced(
        self,
        kind: str,
        call: Call,
        run: Callable[[Context], Awaitable[Mapping[str, Any] | None]],
        rerun: bool,
    ) -> CallResult:
        key = call.idempotency_key
        if len(key) > MAX_KEY_LENGTH:
            raise InvalidArgument("idempotency_key", f"must be at most {MAX_KEY_LENGTH} characters")
        if not key:
            return CallResult(await self._measured(call, run, kind))
        slot = (kind, key)
        while (first := self._running.get(slot)) is not None:
            # The same key is running now (perhaps for a caller that has gone): wait for
            # it, then look at what it stored.
            await asyncio.wait({first})
        # The function runs in a task of its own, not in the caller's: a caller that goes
        # away (its RPC is cancelled when the orchestrator dies mid-call) must not cancel a
        # run that may already have had its effect. The run ends, stores its result, and
        # the caller's retry with the key gets that result instead of a second run.
        task = asyncio.create_task(self._once(kind, call, run, rerun), name=f"{kind} {key}")
        self._running[slot] = task
        task.add_done_callback(functools.partial(self._ended, slot))
        return await asyncio.shield(task)

    def _ended(self, slot: tuple[str, str], task: asyncio.Task[CallResult]) -> None:
        if self._running.get(slot) is task:
            del self._running[slot]
        if not task.cancelled():
            task.exception()  # Retrieved here: the caller that started it may have gone.

    async def _once(
        self,
        kind: str,
        call: Call,
        run: Callable[[Context], Awaitable[Mapping[str, Any] | None]],
        rerun: bool,
    ) -> CallResult:
        key = call.idempotency_key
        stored = await self.results.get(kind, key)
        if stored is not None:
            if stored.action != call.action:
                raise AlreadyExists(
                    "idempotency_key", key, f"it was used for action {stored.action!r}"
                )
            return CallResult(stored.output, replayed=True)
        interrupted = await self.results.started(kind, key)
        if interrupted is not None:
            if interrupted != call.action:
                raise AlreadyExists(
                    "idempotency_key", key, f"it was used for action {interrupted!r}"
                )
            # Marked started, never ended, and not running in this process: the domain
            # stopped in the middle of it. Its effect is unknown: it runs again only when
            # declared safe to.
            if rerun:
                log.warning("%s %r was interrupted by a stop; running it again", kind, key)
            else:
                raise FailedPrecondition(
                    f"idempotency_key {key!r}: the {kind} of action {call.action!r} with "
                    f"this key was interrupted when domain {self.domain.domain_id!r} "
                    "stopped; its effect is unknown, so it is not run a second time",
                    reason="IDEMPOTENCY_KEY_INTERRUPTED",
                )
        await self.results.mark_started(kind, key, call.action)
        try:
            output = await self._measured(call, run, kind)
        except Exception:
            # A failure stores nothing: a retry with the key runs the function again.
            try:
                await self.results.unmark_started(kind, key)
            except Exception:
                log.exception("could not clear the start mark of %s %r", kind, key)
            raise
        await self.results.put(kind, key, call.action, output)
        return CallResult(output)

    async def drain(self, timeout_s: float) -> None:
        """Waits up to `timeout_s` for the runs in progress, then cancels the rest (they
        stay marked started, so their keys answer IDEMPOTENCY_KEY_INTERRUPTED later)."""
        tasks = set(self._running.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            log.warning("stopping with %s still running: it is interrupted", task.get_name())
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _measured(
        self,
        call: Call,
        run: Callable[[Context], Awaitable[Mapping[str, Any] | None]],
        kind: str = EXECUTE,
    ) -> dict[str, Any]:
        ctx = self._context(call.action, call)
        self.metrics.started()
        in_flight = self.metrics.in_flight
        started_at = time.time()
        started = self._monotonic()
        success: bool | None = False
        try:
            async with self._slots:
                started = self._monotonic()
                output = _json_object(call.action, await run(ctx))
            success = True
            return output
        except _CALLER_ERRORS:
            success = None
            raise
        finally:
            latency = self._monotonic() - started
            self.metrics.finished(latency, success=success, caller=call.caller)
            # Outcomes of actions only: a compensation is not the action's own result.
            if self.outcomes is not None and success is not None and kind == EXECUTE:
                self.outcomes.record(
                    call.action,
                    success=success,
                    latency_s=latency,
                    input_size=_input_size(call.input),
                    attempt=call.attempt,
                    in_flight=in_flight,
                    started_at=started_at,
                )

    def _context(self, action: str, call: Call) -> Context:
        return Context(
            domain_id=self.domain.domain_id,
            action=action,
            store=self.store,
            memory=self.memory.scoped(call.idempotency_key),
            workflow_id=call.workflow_id,
            execution_id=call.execution_id,
            step_id=call.step_id,
            attempt=call.attempt,
            idempotency_key=call.idempotency_key,
            # The events it publishes carry the action's (or handler's) span.
            traceparent=current_traceparent(call.traceparent),
            _events=self.events,
        )


def _input_size(data: Mapping[str, Any]) -> int:
    """Size of an input in bytes, as compact JSON (what the learning kernel buckets by)."""
    try:
        return len(json.dumps(data, separators=(",", ":"), default=str))
    except (TypeError, ValueError):
        return 0


def _json_object(action: str, value: object) -> dict[str, Any]:
    """The output as the JSON object the caller (and a replay) will see: numbers become
    floats exactly as they do on the wire, so a replay is identical to the first answer."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"action {action!r} returned {type(value).__name__}; expected a dict")
    struct = struct_pb2.Struct()
    try:
        struct.update(dict(value))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"action {action!r} returned a value that is not JSON: {exc}") from exc
    return json_format.MessageToDict(struct)
