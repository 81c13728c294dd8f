"""Runs one execution: schedules ready steps in parallel, retries, rolls back, signs.

One `ExecutionRunner` task owns an execution. Every transition is persisted (through the
store's group commit) before it is acted on: a step is recorded RUNNING before its call
goes out, a retry before its backoff starts, a step COMPENSATING before its Compensate
call, and the final state with the signature before anyone is told. After a crash the
runner starts again from the last snapshot: RUNNING steps are called again with the same
idempotency key, so a domain that already applied them returns the stored result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace

from grace.domain.v1 import domain_pb2
from services.common import telemetry
from services.common.call_metrics import WORKFLOW_PREFIX, TrafficKind
from services.common.domain_router import CallError, Candidate, from_struct, to_struct
from services.common.governance_client import RISK_LEVELS
from services.common.waiting import wait_for_event
from services.orchestrator import events, proof
from services.orchestrator.dataflow import DataReferenceError, resolve
from services.orchestrator.leases import LeaseLost
from services.orchestrator.model import (
    Execution,
    ExecutionState,
    JsonDict,
    StepRun,
    StepSpec,
    StepState,
    WorkflowSpec,
)
from services.orchestrator.writer import Event

if TYPE_CHECKING:
    from services.orchestrator.engine import Orchestrator

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("services.orchestrator")


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)


class ExecutionRunner:
    """Drives one execution to its end.

    Args:
        host: The orchestrator (store, router, signer, settings, stats, watchers).
        spec: The workflow being run.
        execution: The execution, new or loaded from its last snapshot.
        initial_events: Events persisted with the first transition (workflow.started).
        trace_context: Context of the call that started the execution (ExecuteWorkflow): the
            execution span is its child even though the runner outlives the call. None (a
            resumed execution) starts a new trace.
    """

    def __init__(
        self,
        host: Orchestrator,
        spec: WorkflowSpec,
        execution: Execution,
        initial_events: Sequence[Event] = (),
        trace_context: otel_context.Context | None = None,
    ) -> None:
        self.host = host
        self._trace_parent = trace_context
        self._execution_context: otel_context.Context | None = None
        self.spec = spec
        self.ex = execution
        self.first_persist: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None
        self._events: list[Event] = list(initial_events)
        self._labels: list[str] = []
        self._dirty = True
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._steps: set[asyncio.Task[None]] = set()
        # Set once another orchestrator instance owns the execution: the runner stops
        # where it is, and the owner carries on from the last transition stored.
        self.lost = False

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        """Starts the runner task."""
        self.task = asyncio.create_task(self._run(), name=f"execution-{self.ex.execution_id}")
        return self.task

    def lose(self) -> None:
        """Stops the runner because another instance owns the execution now."""
        self.lost = True
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()

    def request_cancel(self) -> None:
        """Stops scheduling new steps; the rollback follows once running steps finish."""
        self._stop.set()
        self._wake.set()

    def _stopping(self) -> bool:
        return self._stop.is_set() or self.ex.cancel_requested

    def _mark(self, label: str, *new_events: Event) -> None:
        self._labels.append(label)
        self._events.extend(new_events)
        self._dirty = True

    async def persist(self, label: str = "", *new_events: Event, sync: bool = False) -> None:
        """Persists the execution with everything marked since the last persist.

        `sync` also flushes it to disk; see `OrchestratorStore`. The first persist (the
        execution accepted), rollbacks and final states are always flushed.
        """
        sync = sync or not self.first_persist.done()
        if label:
            self._mark(label, *new_events)
        labels, batch = self._labels, self._events
        self._labels, self._events, self._dirty = [], [], False
        self.ex.updated_at = self.host.clock()
        snapshot = self.ex.to_json()
        backoff = 0.05
        while True:
            try:
                await self.host.store.save(snapshot, batch, sync=sync)
                break
            except LeaseLost:
                self.lose()
                raise
            except Exception as exc:
                if not self.first_persist.done():
                    raise  # ExecuteWorkflow reports it; nothing has been acted on yet.
                # Nothing is acted on until the transition is stored: wait for the database
                # to come back rather than give up on an execution that may need a rollback.
                log.warning(
                    "execution %s: persisting failed (%s); retrying in %.2fs",
                    self.ex.execution_id,
                    exc,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        if not self.first_persist.done():
            self.first_persist.set_result(None)
        self.host.notify(self.ex, snapshot, "; ".join(labels))

    def _attributes(self, spec: StepSpec | None = None) -> dict[str, str | int]:
        attributes: dict[str, str | int] = {
            "grace.workflow.id": self.spec.workflow_id,
            "grace.workflow.name": self.spec.name,
            "grace.execution.id": self.ex.execution_id,
        }
        if spec is not None:
            attributes["grace.step.id"] = spec.id
            attributes["grace.step.action"] = spec.action
            if spec.domain_id:
                attributes["grace.domain.id"] = spec.domain_id
            else:
                attributes["grace.step.capability"] = spec.capability
        return attributes

    async def _run(self) -> None:
        if not telemetry.enabled():
            # No spans at all while tracing is off: a no-op span still costs a context
            # switch-over per step, which shows in a busy orchestrator's profile.
            await self._drive()
            return
        # One span for the whole execution; every step span is its child. The runner task
        # outlives ExecuteWorkflow, so its context is carried in explicitly.
        with _tracer.start_as_current_span(
            f"execution {self.spec.name}",
            context=self._trace_parent,
            attributes=self._attributes(),
        ) as span:
            self._execution_context = otel_context.get_current()
            try:
                await self._drive()
            finally:
                span.set_attribute("grace.execution.state", self.ex.state.value)
                if self.ex.terminal and self.ex.state != ExecutionState.SUCCEEDED:
                    span.set_status(trace.Status(trace.StatusCode.ERROR, self.ex.error))

    async def _drive(self) -> None:
        try:
            if self.ex.state == ExecutionState.RUNNING:
                await self._forward()
            if self.ex.state == ExecutionState.COMPENSATING:
                await self._compensate()
        except (asyncio.CancelledError, LeaseLost):
            for task in self._steps:
                task.cancel()
            await asyncio.gather(*self._steps, return_exceptions=True)
            if self.lost:
                if not self.first_persist.done():
                    self.first_persist.set_exception(LeaseLost(self.ex.execution_id))
                log.warning(
                    "execution %s is owned by another instance now; stopped driving it",
                    self.ex.execution_id,
                )
                return
            raise
        except Exception as exc:
            log.exception("execution %s stopped on an internal error", self.ex.execution_id)
            if not self.first_persist.done():
                self.first_persist.set_exception(exc)
            raise
        finally:
            self.host.runner_done(self)

    # -- forward phase ------------------------------------------------------------------

    def _context(self) -> JsonDict:
        return {
            "input": self.ex.input,
            "steps": {
                sid: {"input": run.input, "output": run.output}
                for sid, run in self.ex.steps.items()
                if run.state == StepState.SUCCEEDED
            },
            "execution": {"id": self.ex.execution_id},
            "workflow": {"id": self.spec.workflow_id, "name": self.spec.name},
        }

    def _input_for(self, spec: StepSpec) -> JsonDict:
        if spec.data:
            resolved = resolve(spec.data, self._context())
            return resolved if isinstance(resolved, dict) else {"value": resolved}
        # No data: the workflow input, then each dependency's input and output, merged.
        merged: JsonDict = dict(self.ex.input)
        for dep in spec.depends_on:
            run = self.ex.steps[dep]
            merged.update(run.input or {})
            merged.update(run.output or {})
        return merged

    def _ready(self) -> list[StepSpec]:
        return [
            spec
            for spec in self.spec.steps
            if self.ex.steps[spec.id].state == StepState.PENDING
            and all(self.ex.steps[d].state == StepState.SUCCEEDED for d in spec.depends_on)
        ]

    def _launch(self, spec: StepSpec, run: StepRun) -> None:
        task = asyncio.create_task(self._run_step(spec, run), name=f"step-{spec.id}")
        self._steps.add(task)

        def finished(done: asyncio.Task[None]) -> None:
            self._steps.discard(done)
            self._wake.set()

        task.add_done_callback(finished)

    async def _run_inline(self, spec: StepSpec) -> None:
        try:
            await self._run_step(spec, self.ex.steps[spec.id])
        except LeaseLost:
            raise
        except Exception:
            # As for a step in a task of its own: the step stays RUNNING, so the execution
            # rolls back once nothing else runs (and a restart calls it again).
            log.exception(
                "execution %s: step %s stopped on an internal error", self.ex.execution_id, spec.id
            )

    async def _forward(self) -> None:
        limit = self.host.settings.max_parallel_steps
        for spec in self.spec.steps:
            run = self.ex.steps[spec.id]
            if run.state == StepState.RUNNING:
                self._launch(spec, run)
        while True:
            started: list[StepSpec] = []
            if not self._stopping():
                for spec in self._ready()[: max(0, limit - len(self._steps))]:
                    run = self.ex.steps[spec.id]
                    run.state = StepState.RUNNING
                    run.attempts = 1
                    run.started_at = self.host.clock()
                    try:
                        run.input = self._input_for(spec)
                    except DataReferenceError as exc:
                        # Recorded like a failed call, so the proof shows why the step failed.
                        with self._step_span(spec, run):
                            self._record(
                                spec, run, "execute", 1, run.started_at, None, f"input: {exc}"
                            )
                            self._fail(spec, run, f"input: {exc}")
                        break
                    started.append(spec)
                    self._mark(f"step.started {spec.id}")
            if not started and not self._steps:
                # Nothing runs any more: the final transition (SUCCEEDED or COMPENSATING)
                # is persisted together with what was marked since the last persist.
                break
            if self._dirty:
                await self.persist()
            if len(started) == 1 and not self._steps:
                # The one step that can run now (a sequential chain): run it in this task.
                # In a task of its own it would cost a task, a done callback and a wake-up,
                # while this runner only waited for it (a cancel request is seen after it,
                # as before: it only stops new steps).
                await self._run_inline(started[0])
                continue
            for spec in started:
                self._launch(spec, self.ex.steps[spec.id])
            await self._wake.wait()
            self._wake.clear()
        if all(r.state == StepState.SUCCEEDED for r in self.ex.steps.values()) and not (
            self.ex.cancel_requested
        ):
            await self._finish(ExecutionState.SUCCEEDED)
            return
        for run in self.ex.steps.values():
            if run.state == StepState.PENDING:
                run.state = StepState.SKIPPED
        if not self.ex.error:
            self.ex.error = "cancelled by request"
        self._set_state(ExecutionState.COMPENSATING)
        await self.persist("execution.compensating", sync=True)

    def _fail(self, spec: StepSpec, run: StepRun, error: str) -> None:
        run.state = StepState.FAILED
        run.error = error
        run.finished_at = self.host.clock()
        if not self.ex.error:
            self.ex.error = f"step {spec.id} failed: {error}"
        self._stop.set()
        self._mark(
            f"step.failed {spec.id}",
            events.event(events.STEP_FAILED, events.step_failed(self.ex, run), self.ex, spec.id),
        )

    @contextlib.contextmanager
    def _step_span(self, spec: StepSpec, run: StepRun, kind: str = "step") -> Iterator[None]:
        """A child span of the execution span for one step (or its compensation); ERROR
        when the step ends FAILED or its compensation failed."""
        if self._execution_context is None:  # tracing is off (see `_run`)
            yield
            return
        with _tracer.start_as_current_span(
            f"{kind} {spec.id}", context=self._execution_context, attributes=self._attributes(spec)
        ) as span:
            yield
            if run.domain_id:
                span.set_attribute("grace.domain.id", run.domain_id)
            span.set_attribute("grace.step.attempts", run.attempts)
            span.set_attribute("grace.step.state", run.state.value)
            if run.state == StepState.FAILED:
                span.set_status(trace.Status(trace.StatusCode.ERROR, run.error))
            elif run.state == StepState.COMPENSATION_FAILED or run.compensation_error:
                span.set_status(trace.Status(trace.StatusCode.ERROR, run.compensation_error))

    async def _run_step(self, spec: StepSpec, run: StepRun) -> None:
        with self._step_span(spec, run):
            await self._attempts(spec, run)

    async def _attempts(self, spec: StepSpec, run: StepRun) -> None:
        while True:
            wait = run.next_attempt_at - self.host.clock()
            if wait > 0:
                await wait_for_event(self._stop, wait)
            if self._stopping() and run.next_attempt_at:
                self._fail(spec, run, f"retry abandoned after: {run.error}")
                return
            started = self.host.clock()
            try:
                output = await self._execute(spec, run)
            except CallError as exc:
                self._record(spec, run, "execute", run.attempts, started, None, exc.message)
                if exc.domain_id and not run.domain_id:
                    run.domain_id = exc.domain_id
                elapsed = self.host.clock() - run.started_at
                if (
                    not exc.retryable
                    or self._stopping()
                    or not spec.retry.allows_another(run.attempts, exc.unreachable, elapsed)
                ):
                    self._fail(spec, run, exc.message)
                    return
                run.error = exc.message
                run.next_attempt_at = self.host.clock() + spec.retry.delay_after(run.attempts)
                run.attempts += 1
                self.host.stats.step_retries += 1
                await self.persist(f"step.retrying {spec.id} attempt {run.attempts}")
                continue
            self._record(spec, run, "execute", run.attempts, started, output, "")
            run.state = StepState.SUCCEEDED
            run.output = output
            run.error = ""
            run.next_attempt_at = 0.0
            run.finished_at = self.host.clock()
            self.ex.completion_order.append(spec.id)
            self._mark(
                f"step.succeeded {spec.id}",
                events.event(
                    events.STEP_COMPLETED, events.step_completed(self.ex, run), self.ex, spec.id
                ),
            )
            return

    async def _execute(self, spec: StepSpec, run: StepRun) -> JsonDict:
        if run.domain_id:
            kind, key = "domain", run.domain_id
        elif spec.domain_id:
            kind, key = "domain", spec.domain_id
        else:
            kind, key = "capability", spec.capability
        assert run.input is not None
        request = domain_pb2.ExecuteRequest(
            action=spec.action,
            input=to_struct(run.input),
            workflow_id=self.spec.workflow_id,
            execution_id=self.ex.execution_id,
            step_id=spec.id,
            attempt=run.attempts,
            idempotency_key=f"{self.ex.execution_id}/{spec.id}",
        )

        async def invoke(stub: Any, domain_id: str) -> Any:
            request.domain_id = domain_id
            return await stub.Execute(request, timeout=spec.timeout_s)

        await self._ask_governance(spec, run, key)

        self.host.stats.step_attempts += 1
        async with self.host.call_slots:
            reached, response = await self.host.router.call(kind, key, invoke)
        # Remembered with the step: its compensation goes straight back there.
        run.domain_id, run.address = reached.domain_id, reached.address
        return from_struct(response.output)

    async def _ask_governance(self, spec: StepSpec, run: StepRun, target: str) -> None:
        # Seed 004 phase 4: every step is an action `<domain>.<action>` that governance may
        # refuse; a refusal fails the step for good (no retry), so the execution rolls back
        # with the reasons in its record. Steps that call governance itself are not asked
        # about twice.
        gate = self.host.gate
        if gate is None or target == "governance":
            return
        assert run.input is not None
        risk = run.input.get("risk_level")
        decision = await gate.check(
            f"workflow:{self.spec.workflow_id}",
            f"{target}.{spec.action}",
            f"execution:{self.ex.execution_id}/{spec.id}",
            risk_level=risk if risk in RISK_LEVELS else "medium",
            context={"workflow_id": self.spec.workflow_id, "step_id": spec.id},
            request_id=f"{self.ex.execution_id}/{spec.id}/{run.attempts}",
        )
        if decision.allowed:
            return
        if decision.verdict == "pending_approval" and decision.approval_id:
            await self._await_approval(spec, run, target, decision.approval_id)
            return
        raise CallError(
            f"governance {decision.verdict} for {target}.{spec.action}: "
            + "; ".join(decision.reasons),
            retryable=False,
        )

    async def _await_approval(
        self, spec: StepSpec, run: StepRun, target: str, approval_id: str
    ) -> None:
        """Waits for a person to settle the approval a REQUIRE_APPROVAL policy asked for,
        as a `governance.verify` step does: the step stays RUNNING (its record says what
        it waits for) until the approval is approved (the step runs), rejected or expired
        (the step fails for good and the execution rolls back), or the wait ends. After a
        restart the same attempt asks with the same request id, so governance answers the
        same decision and the wait resumes on the same approval."""
        gate = self.host.gate
        assert gate is not None
        waiting = getattr(gate, "wait_for_approval", None)
        what = f"{target}.{spec.action}"
        if waiting is None:
            raise CallError(
                f"governance requires approval {approval_id} for {what}, and this "
                "orchestrator's gate cannot wait for approvals",
                retryable=False,
            )
        run.error = f"waiting for approval {approval_id} of {what}"
        await self.persist(f"step.awaiting_approval {spec.id} {approval_id}")
        wait_s = self.host.settings.approval_wait_s
        follow = asyncio.ensure_future(waiting(approval_id, wait_s))
        stopped = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({follow, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not follow.done():
                follow.cancel()
        if not follow.done() or follow.cancelled():
            raise CallError(
                f"stopped while waiting for approval {approval_id} of {what}", retryable=False
            )
        try:
            settled = follow.result()
        except grpc.aio.AioRpcError as exc:
            # Governance is unreachable: a retryable failure, asked again on the next attempt.
            raise CallError(
                f"cannot follow approval {approval_id} of {what}: {exc.code().name}",
                retryable=True,
            ) from None
        run.error = ""
        if settled == "approved":
            return
        if settled == "pending":
            raise CallError(
                f"approval {approval_id} of {what} was not settled within {wait_s:g}s",
                retryable=False,
            )
        raise CallError(
            f"governance: approval {approval_id} of {what} was {settled}", retryable=False
        )

    def _record(
        self,
        spec: StepSpec,
        run: StepRun,
        kind: str,
        attempt: int,
        started: float,
        output: JsonDict | None,
        error: str,
        outcome: str = "",
    ) -> None:
        if kind == "execute":
            self.host.traffic.record_edge(
                TrafficKind.STEP,
                f"{WORKFLOW_PREFIX}{self.spec.workflow_id}",
                run.domain_id or spec.domain_id or spec.capability,
                self.host.clock() - started,
                error=bool(error),
            )
        proof.append_record(
            self.ex.records,
            self.ex.execution_id,
            step_id=spec.id,
            domain_id=run.domain_id,
            action=(spec.compensation_action or spec.action)
            if kind == "compensate"
            else spec.action,
            kind=kind,
            attempt=attempt,
            outcome=outcome or ("failed" if error else "succeeded"),
            input_sha256=proof.digest(run.input),
            output_sha256=proof.digest(output),
            error=error,
            started_at_us=_us(started),
            finished_at_us=_us(self.host.clock()),
        )

    # -- rollback -----------------------------------------------------------------------

    async def _compensate(self) -> None:
        failed = False
        for step_id in reversed(self.ex.completion_order):
            run = self.ex.steps[step_id]
            if run.state == StepState.COMPENSATION_FAILED:
                failed = True
                continue
            if run.state not in (StepState.SUCCEEDED, StepState.COMPENSATING):
                continue
            spec = self.spec.step(step_id)
            if spec.compensation_skip:
                run.state = StepState.COMPENSATED
                self._record(spec, run, "compensate", 0, self.host.clock(), None, "", "skipped")
                self.ex.compensation_order.append(step_id)
                self._mark(f"step.compensation_skipped {step_id}")
                continue
            run.state = StepState.COMPENSATING
            await self.persist(f"step.compensating {step_id}")
            with self._step_span(spec, run, "compensate"):
                compensated = await self._compensate_step(spec, run)
            if compensated:
                run.state = StepState.COMPENSATED
                self.ex.compensation_order.append(step_id)
                self._mark(f"step.compensated {step_id}")
            else:
                failed = True
                run.state = StepState.COMPENSATION_FAILED
                self._mark(f"step.compensation_failed {step_id}")
        await self._finish(
            ExecutionState.COMPENSATION_FAILED if failed else ExecutionState.ROLLED_BACK
        )

    async def _compensate_step(self, spec: StepSpec, run: StepRun) -> bool:
        action = spec.compensation_action or spec.action
        attempt = 0
        first = self.host.clock()
        while True:
            attempt += 1
            started = self.host.clock()
            request = domain_pb2.CompensateRequest(
                domain_id=run.domain_id,
                action=action,
                input=to_struct(run.input or {}),
                output=to_struct(run.output or {}),
                workflow_id=self.spec.workflow_id,
                execution_id=self.ex.execution_id,
                step_id=spec.id,
                attempt=attempt,
                idempotency_key=f"{self.ex.execution_id}/{spec.id}/compensate",
            )

            async def invoke(stub: Any, _domain_id: str, request: Any = request) -> Any:
                return await stub.Compensate(request, timeout=spec.timeout_s)

            self.host.stats.compensations += 1
            router = self.host.router
            try:
                async with self.host.call_slots:
                    if run.address:
                        response = await router.call_at(
                            Candidate(run.domain_id, run.address), invoke
                        )
                    else:
                        _, response = await router.call("domain", run.domain_id, invoke)
            except CallError as exc:
                if exc.code == grpc.StatusCode.UNIMPLEMENTED:
                    # The domain declares no compensation for this action: nothing to undo.
                    self._record(spec, run, "compensate", attempt, started, None, "", "skipped")
                    return True
                self._record(spec, run, "compensate", attempt, started, None, exc.message)
                elapsed = self.host.clock() - first
                if exc.retryable and spec.retry.allows_another(attempt, exc.unreachable, elapsed):
                    await asyncio.sleep(spec.retry.delay_after(attempt))
                    continue
                run.compensation_error = exc.message
                return False
            self._record(
                spec, run, "compensate", attempt, started, from_struct(response.output), ""
            )
            return True

    # -- the end ------------------------------------------------------------------------

    def _set_state(self, state: ExecutionState) -> None:
        self.host.state_changed(self.ex.state, state)
        self.ex.state = state

    async def _finish(self, state: ExecutionState) -> None:
        self._set_state(state)
        self.ex.finished_at = self.host.clock()
        if self.ex.awaits_compensation_retry:
            # Scheduled in the same snapshot as the failure, so a restart keeps it.
            self.ex.next_compensation_at = self.ex.finished_at + self.host.rounds.delay(
                self.ex.compensation_rounds + 1
            )
        head = proof.head_hash(self.ex.execution_id, self.ex.records)
        message = proof.signing_message(
            self.ex.execution_id, self.spec.workflow_id, state.value, len(self.ex.records), head
        )
        self.ex.signature = self.host.signer.sign(message)
        key_id = self.host.signer.key_id
        if state == ExecutionState.SUCCEEDED:
            payload = events.completed(self.ex, head, key_id)
            event = events.event(events.COMPLETED, payload, self.ex)
        else:
            payload = events.rolled_back(self.ex, head, key_id)
            event = events.event(events.ROLLED_BACK, payload, self.ex)
        await self.persist(f"execution.{state.value.lower()}", event, sync=True)
        self.host.stats.record_duration(self.ex.finished_at - self.ex.created_at)
