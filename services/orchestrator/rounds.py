"""Compensations that failed: new rounds with backoff, retry now, abandon, list.

An execution ends COMPENSATION_FAILED when a step's compensation failed after its
retries. It is not left there: its runner schedules the next round of compensation in
the same snapshot (`Execution.next_compensation_at`, from the orchestrator's
`compensation_retry` backoff), so the schedule survives a crash and is read back at start.
A round compensates again the steps whose compensation failed and ends ROLLED_BACK, or
COMPENSATION_FAILED with the following round scheduled. Operators start a round now
(`retry`) or give up (`abandon`, recording who and why); an abandoned execution stays
COMPENSATION_FAILED and is never retried again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from services.common import completion
from services.common.completion import runs_to_completion
from services.common.errors import FailedPrecondition, NotFound
from services.common.pagination import decode_token, encode_token, page_size
from services.common.validation import require_text
from services.common.waiting import wait_for_event
from services.orchestrator import events
from services.orchestrator.model import Execution, ExecutionState, StepState
from services.orchestrator.runner import ExecutionRunner

if TYPE_CHECKING:
    from services.orchestrator.engine import Orchestrator

log = logging.getLogger(__name__)

# Longest sleep of the scheduler when nothing is due (it is woken when a round is added).
_IDLE_S = 3600.0


class CompensationRounds:
    """The COMPENSATION_FAILED executions of an orchestrator and their next rounds.

    Args:
        host: The orchestrator (store, clock, settings, live runners).
    """

    def __init__(self, host: Orchestrator) -> None:
        self.host = host
        # Execution id -> when its next round is due (epoch seconds).
        self._due: dict[str, float] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Executions a retry or an abandon is working on (claimed before any await).
        self._busy: set[str] = set()

    async def open(self) -> None:
        """Reads the schedule back from the store and starts the scheduler."""
        state = ExecutionState.COMPENSATION_FAILED.value
        for snapshot in await self.host.store.load_state(state):
            self.schedule(Execution.from_json(snapshot))
        self._task = asyncio.create_task(self._forever(), name="compensation-rounds")

    async def close(self) -> None:
        """Stops the scheduler (rounds in progress are the host's runners)."""
        # A retry or an abandon whose caller went away ends before the runners are stopped.
        await completion.drain()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def delay(self, round_number: int) -> float:
        """Seconds before round `round_number` (1 after the first failure)."""
        return self.host.settings.compensation_retry.delay(round_number)

    def schedule(self, execution: Execution) -> None:
        """Plans the next round of an execution that ended COMPENSATION_FAILED."""
        if execution.awaits_compensation_retry:
            self._due[execution.execution_id] = execution.next_compensation_at
            self._changed.set()

    async def list(
        self, size: int, token: str, include_abandoned: bool
    ) -> tuple[list[Execution], str]:
        """One page of COMPENSATION_FAILED executions (newest first) and the next token;
        those an operator abandoned only with `include_abandoned`."""
        limit = page_size(size)
        position = decode_token(token)
        after = (float(position["t"]), str(position["id"])) if position else None
        state = ExecutionState.COMPENSATION_FAILED.value
        found: list[Execution] = []
        while len(found) <= limit:
            batch = await self.host.store.list_executions(limit + 1, after, "", state)
            for snapshot in batch:
                execution = Execution.from_json(snapshot)
                if include_abandoned or not execution.abandoned_at:
                    found.append(execution)
            if len(batch) <= limit:
                break
            after = (float(batch[-1]["created_at"]), str(batch[-1]["execution_id"]))
        page = found[:limit]
        next_token = (
            encode_token({"t": page[-1].created_at, "id": page[-1].execution_id})
            if len(found) > limit
            else ""
        )
        return page, next_token

    @runs_to_completion
    async def retry(self, execution_id: str, operator: str = "") -> Execution:
        """Starts a new round of compensation of a COMPENSATION_FAILED execution now.

        The steps whose compensation failed are compensated again (with their retry
        policy, at the address they ran at); the execution ends ROLLED_BACK, or
        COMPENSATION_FAILED again with the next round scheduled.

        Args:
            execution_id: The execution.
            operator: Who asked; "" for the scheduled rounds.

        Raises:
            NotFound: No such execution.
            FailedPrecondition: It is not COMPENSATION_FAILED, was abandoned, or is being
                compensated now.

        Runs to its end even when its caller goes away: an execution stored COMPENSATING
        without a runner would stay so until a restart.
        """
        return await self._retry(execution_id, operator)

    async def _retry(self, execution_id: str, operator: str) -> Execution:
        require_text("operator", operator, max_length=128)
        self._claim(execution_id)
        try:
            current = await self.host.get_execution(execution_id)
            _require_compensation_failed(current)
            if await self.host.own(execution_id):
                current = await self.host.get_execution(execution_id)  # As its owner left it.
                _require_compensation_failed(current)
            if current.abandoned_at:
                raise FailedPrecondition(
                    f"execution {execution_id!r} was abandoned by {current.abandoned_by!r}; "
                    "its compensation is not retried",
                    reason="COMPENSATION_ABANDONED",
                )
            spec = await self.host.workflow(current.workflow_id)
            execution = Execution.from_json(current.to_json())
            execution.compensation_rounds += 1
            execution.next_compensation_at = 0.0
            execution.finished_at = 0.0
            execution.signature = b""
            execution.state = ExecutionState.COMPENSATING
            for run in execution.steps.values():
                if run.state == StepState.COMPENSATION_FAILED:
                    run.state = StepState.COMPENSATING
                    run.compensation_error = ""
            announce = events.compensation_retrying(execution, operator)
            runner = ExecutionRunner(
                self.host,
                spec,
                execution,
                [events.event(events.COMPENSATION_RETRYING, announce, execution)],
            )
            by = f" by {operator}" if operator else ""
            runner._mark(f"execution.compensation_retry round {execution.compensation_rounds}{by}")
            await runner.persist(sync=True)  # Raises, with nothing changed, if not stored.
            self._due.pop(execution_id, None)
            self.host.state_changed(ExecutionState.COMPENSATION_FAILED, ExecutionState.COMPENSATING)
            self.host.run(runner)
            log.info(
                "compensation of execution %s: round %d%s",
                execution_id,
                execution.compensation_rounds,
                by,
            )
            return execution
        finally:
            self._busy.discard(execution_id)

    @runs_to_completion
    async def abandon(self, execution_id: str, operator: str, reason: str) -> Execution:
        """Gives up on compensating a COMPENSATION_FAILED execution: it is no longer
        retried, and who gave up and why are recorded with it. Abandoning it again
        returns it unchanged.

        Raises:
            InvalidArgument: `operator` or `reason` is missing or too long.
            NotFound: No such execution.
            FailedPrecondition: It is not COMPENSATION_FAILED, or is being compensated now.

        Runs to its end even when its caller goes away: a stored abandon must also leave
        the schedule and the cache of ended executions, or a round would still start from
        the copy that was not abandoned, and undo it.
        """
        require_text("operator", operator, max_length=128, required=True)
        require_text("reason", reason, max_length=512, required=True)
        self._claim(execution_id)
        try:
            current = await self.host.get_execution(execution_id)
            _require_compensation_failed(current)
            if current.abandoned_at:
                return current
            if await self.host.own(execution_id):
                current = await self.host.get_execution(execution_id)
                _require_compensation_failed(current)
                if current.abandoned_at:
                    return current
            execution = Execution.from_json(current.to_json())
            execution.abandoned_by = operator
            execution.abandon_reason = reason
            execution.abandoned_at = execution.updated_at = self.host.clock()
            execution.next_compensation_at = 0.0
            announce = events.compensation_abandoned(execution)
            await self.host.store.save(
                execution.to_json(),
                [events.event(events.COMPENSATION_ABANDONED, announce, execution)],
                sync=True,
            )
            self._due.pop(execution_id, None)
            self.host.remember(execution)
            log.warning(
                "compensation of execution %s abandoned by %s: %s", execution_id, operator, reason
            )
            return execution
        finally:
            self._busy.discard(execution_id)

    def _claim(self, execution_id: str) -> None:
        if execution_id in self._busy or self.host.is_live(execution_id):
            raise FailedPrecondition(
                f"execution {execution_id!r} is being compensated now; try again when it ends",
                reason="COMPENSATION_IN_PROGRESS",
            )
        self._busy.add(execution_id)

    async def _forever(self) -> None:
        """Starts each execution's next round when it is due."""
        while True:
            self._changed.clear()
            now = self.host.clock()
            for execution_id in [e for e, at in self._due.items() if at <= now]:
                try:
                    # Not shielded: the scheduler is cancelled only when the orchestrator
                    # stops, and the restart resumes a round stored COMPENSATING.
                    await self._retry(execution_id, "")
                except (FailedPrecondition, NotFound):
                    self._due.pop(execution_id, None)  # Running, abandoned or gone.
                except Exception:
                    delay = self.delay(1)
                    log.exception(
                        "could not start compensating execution %s; again in %.0fs",
                        execution_id,
                        delay,
                    )
                    self._due[execution_id] = self.host.clock() + delay
            wait = min(self._due.values(), default=now + _IDLE_S) - self.host.clock()
            if wait > 0:
                await wait_for_event(self._changed, min(wait, _IDLE_S))


def _require_compensation_failed(execution: Execution) -> None:
    if execution.state != ExecutionState.COMPENSATION_FAILED:
        raise FailedPrecondition(
            f"execution {execution.execution_id!r} is {execution.state.value}; only a "
            "COMPENSATION_FAILED execution is retried or abandoned",
            reason="EXECUTION_NOT_COMPENSATION_FAILED",
        )
