"""The orchestrator core: workflows, executions, cancel, watch, proofs and stats.

Plain Python over a store, a domain router and a signing key; the gRPC servicer is a thin
adapter over it. Active executions live in memory with their runner; ended ones are read
from the store (with a compact cache of recent ones, see `EndedExecutions`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from services.common import telemetry
from services.common.backoff import Backoff
from services.common.call_metrics import CallTallies
from services.common.domain_router import DomainRouter
from services.common.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from services.common.governance_client import GovernanceGate
from services.common.pagination import decode_token, encode_token, page_size, take_page
from services.common.signing import SigningKey
from services.common.validation import require_id, require_text
from services.common.waiting import wait_for_event
from services.orchestrator import events
from services.orchestrator.definition import StepDraft, build_steps, check_name
from services.orchestrator.model import (
    Execution,
    ExecutionState,
    JsonDict,
    StepRun,
    WorkflowSpec,
)
from services.orchestrator.proof import head_hash
from services.orchestrator.recent import EndedExecutions
from services.orchestrator.rounds import CompensationRounds
from services.orchestrator.runner import ExecutionRunner
from services.orchestrator.store import OrchestratorStore

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(frozen=True)
class OrchestratorSettings:
    """Limits of the orchestrator.

    Attributes:
        max_parallel_steps: Steps of one execution running at once.
        max_inflight_calls: Domain calls in flight across all executions.
        recent_cache: Ended executions kept in memory for fast reads.
        recent_cache_bytes: Most bytes those take, compact (see `EndedExecutions`): well
            above what `recent_cache` typical executions take (about 2 MB), so that it
            binds only when executions carry large inputs or outputs.
        approval_wait_s: How long a step held by a REQUIRE_APPROVAL policy waits for the
            approval before it fails.
        compensation_retry: Delay before each new round of compensation of a
            COMPENSATION_FAILED execution (round 1 after the first failure).
    """

    max_parallel_steps: int = 16
    max_inflight_calls: int = 512
    recent_cache: int = 1000
    recent_cache_bytes: int = 8 * 1024 * 1024
    approval_wait_s: float = 3600.0
    compensation_retry: Backoff = field(
        default_factory=lambda: Backoff(initial_s=10.0, factor=2.0, max_s=600.0, jitter=0.2)
    )


@dataclass
class Stats:
    """Counters since start (see GetStatsResponse)."""

    step_attempts: int = 0
    step_retries: int = 0
    compensations: int = 0
    resumed: int = 0
    ended: int = 0
    total_duration_s: float = 0.0
    by_state: dict[str, int] = field(default_factory=dict)
    total_workflows: int = 0

    def record_duration(self, seconds: float) -> None:
        """Adds an ended execution's duration."""
        self.ended += 1
        self.total_duration_s += seconds


@dataclass(frozen=True)
class Proof:
    """What GetExecutionProof returns."""

    execution: Execution
    head_hash: str
    public_key: bytes
    key_id: str


def _derived_id(prefix: str, *parts: str) -> str:
    if not parts[-1]:
        return f"{prefix}{uuid.uuid4().hex[:24]}"
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()
    return f"{prefix}{digest[:24]}"


class Orchestrator:
    """Creates workflows and runs their executions to the end, durably.

    Args:
        store: Durable state.
        router: Resolves and calls domains.
        signer: Key that signs proofs.
        settings: Limits.
        clock: Wall clock (epoch seconds).
        gate: Governance, asked before each step; None asks nobody.
    """

    def __init__(
        self,
        store: OrchestratorStore,
        router: DomainRouter,
        signer: SigningKey,
        settings: OrchestratorSettings | None = None,
        clock: Clock = time.time,
        gate: GovernanceGate | None = None,
    ) -> None:
        self.gate = gate
        self.store = store
        self.router = router
        self.signer = signer
        self.settings = settings or OrchestratorSettings()
        self.clock = clock
        self.stats = Stats()
        # Step calls per workflow and domain, drained by the server's ImmuneReporter.
        self.traffic = CallTallies()
        self.call_slots = asyncio.Semaphore(self.settings.max_inflight_calls)
        self._runners: dict[str, ExecutionRunner] = {}
        self._claims: dict[str, asyncio.Future[Execution]] = {}
        # Read only on a single instance (see `get_execution`), so filled only there.
        self._recent = EndedExecutions(self.settings.recent_cache, self.settings.recent_cache_bytes)
        self._workflows: OrderedDict[str, WorkflowSpec] = OrderedDict()
        self._watchers: dict[str, set[asyncio.Queue[tuple[JsonDict, str]]]] = {}
        self.rounds = CompensationRounds(self)
        self._leases_task: asyncio.Task[None] | None = None
        self._leases_stop = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------------

    async def open(self) -> None:
        """Opens the store and resumes every execution that had not ended.

        With leases (several instances on PostgreSQL), it resumes only the executions
        nobody holds a live lease on, and keeps doing so while it runs (see `_tend_leases`).
        """
        await self.store.open()
        self.stats.by_state = await self.store.counts_by_state()
        self.stats.total_workflows = await self.store.count_workflows()
        if self.store.leases is None:
            for snapshot in await self.store.load_unfinished():
                await self._resume(snapshot)
        else:
            await self._take_over()
            self._leases_task = asyncio.create_task(self._tend_leases(), name="leases")
        await self.rounds.open()

    async def _resume(self, snapshot: JsonDict) -> None:
        execution = Execution.from_json(snapshot)
        spec = await self._workflow(execution.workflow_id)
        execution.resumed += 1
        self.stats.resumed += 1
        runner = ExecutionRunner(self, spec, execution)
        runner._mark("execution.resumed")
        self._runners[execution.execution_id] = runner
        runner.start()
        log.info("resumed execution %s (%s)", execution.execution_id, execution.state)

    async def _take_over(self) -> None:
        """Resumes the executions whose owner stopped renewing its lease."""
        leases = self.store.leases
        assert leases is not None
        for execution_id in await leases.orphans(limit=500):
            if execution_id in self._runners:
                await leases.acquire(execution_id)  # Ours, renewed late: keep it.
                continue
            if await leases.acquire(execution_id) is None:
                continue  # Another instance was quicker.
            snapshot = await self.store.get_execution(execution_id)
            if snapshot is None or Execution.from_json(snapshot).terminal:
                leases.drop(execution_id)
                continue
            await self._resume(snapshot)

    async def _tend_leases(self) -> None:
        """Renews this instance's leases every third of the lease time, stops the runners
        of leases it lost, and takes over executions whose owner stopped renewing.

        An instance that cannot renew for a whole lease time stops all its runners: by
        then another instance may own their executions.
        """
        leases = self.store.leases
        assert leases is not None
        interval = leases.lease_s / 3
        renewed = time.monotonic()
        while not await wait_for_event(self._leases_stop, interval):
            try:
                lost = await leases.renew()
                renewed = time.monotonic()
                await self._take_over()
            except Exception as exc:
                log.warning("renewing execution leases failed: %s", exc)
                lost = set()
                if time.monotonic() - renewed > leases.lease_s:
                    lost = set(leases.held)
                    leases.held.clear()
            for execution_id in lost:
                runner = self._runners.get(execution_id)
                if runner is not None:
                    runner.lose()

    async def close(self) -> None:
        """Stops runners where they are (they resume at the next start) and the store."""
        if self._leases_task is not None:
            self._leases_stop.set()
            await asyncio.gather(self._leases_task, return_exceptions=True)
        await self.rounds.close()
        tasks = [r.task for r in self._runners.values() if r.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.store.close()

    # -- workflows ----------------------------------------------------------------------

    async def create_workflow(
        self, name: str, description: str, drafts: Sequence[StepDraft], request_id: str = ""
    ) -> tuple[WorkflowSpec, bool]:
        """Validates and stores a workflow; returns it and whether domains were checked.

        Raises:
            InvalidArgument: A rule is broken, or a domain_id is not registered.
        """
        check_name(name, description)
        if request_id:
            require_id("request_id", request_id)
        steps = build_steps(drafts)
        domain_ids = sorted({s.domain_id for s in steps if s.domain_id})
        unknown = await self.router.unknown_domains(domain_ids)
        if unknown:
            index = next(i for i, s in enumerate(steps) if s.domain_id in unknown)
            raise InvalidArgument(
                f"steps[{index}].domain_id",
                f"domain {steps[index].domain_id!r} is not registered",
            )
        if unknown is None:
            log.warning("registry unreachable: domains of workflow %r not checked", name)
        spec = WorkflowSpec(
            workflow_id=_derived_id("wf_", "workflow", request_id),
            name=name,
            description=description,
            steps=steps,
            created_at=self.clock(),
        )
        stored = await self.store.save_workflow(spec)
        if stored.created_at == spec.created_at:
            self.stats.total_workflows += 1
        self._cache_workflow(stored)
        return stored, unknown is not None

    def _cache_workflow(self, spec: WorkflowSpec) -> None:
        self._workflows[spec.workflow_id] = spec
        self._workflows.move_to_end(spec.workflow_id)
        while len(self._workflows) > self.settings.recent_cache:
            self._workflows.popitem(last=False)

    async def workflow(self, workflow_id: str) -> WorkflowSpec:
        """A workflow definition (cached).

        Raises:
            NotFound: No such workflow.
        """
        return await self._workflow(workflow_id)

    async def _workflow(self, workflow_id: str) -> WorkflowSpec:
        spec = self._workflows.get(workflow_id)
        if spec is None:
            spec = await self.store.get_workflow(workflow_id)
            if spec is None:
                raise NotFound("workflow", workflow_id)
            self._cache_workflow(spec)
        return spec

    async def get_workflow(self, workflow_id: str) -> tuple[WorkflowSpec, int]:
        """A workflow and its number of executions."""
        spec = await self._workflow(workflow_id)
        counts = await self.store.execution_counts([workflow_id])
        return spec, counts.get(workflow_id, 0)

    async def list_workflows(
        self,
        size: int,
        token: str,
        name: str,
        size_of: Callable[[WorkflowSpec], int] = lambda _: 0,
    ) -> tuple[list[tuple[WorkflowSpec, int]], str]:
        """One page of workflows (newest first) with execution counts, and the next token.

        `size_of` tells a workflow's encoded size in the reply; the page ends early rather
        than exceed `pagination.MAX_PAGE_BYTES`.
        """
        limit = page_size(size)
        position = decode_token(token)
        after = (float(position["t"]), str(position["id"])) if position else None
        specs, more = take_page(
            await self.store.list_workflows(limit + 1, after, name), limit, size_of
        )
        counts = await self.store.execution_counts([s.workflow_id for s in specs])
        next_token = (
            encode_token({"t": specs[-1].created_at, "id": specs[-1].workflow_id}) if more else ""
        )
        return [(s, counts.get(s.workflow_id, 0)) for s in specs], next_token

    # -- executions ---------------------------------------------------------------------

    async def execute(
        self, workflow_id: str, payload: JsonDict, *, wait: bool = False, request_id: str = ""
    ) -> Execution:
        """Starts an execution (persisted before this returns); with `wait`, runs it to the end.

        Raises:
            NotFound: No such workflow.
        """
        if not request_id:
            execution = await self._start(workflow_id, _derived_id("ex_", workflow_id, ""), payload)
            return await self._wait(execution) if wait else execution
        require_id("request_id", request_id)
        execution_id = _derived_id("ex_", workflow_id, request_id)
        # The id is claimed before the first await: a concurrent call with the same
        # request_id waits for the claimant instead of starting a second runner, and
        # tries again itself if the claimant failed (a failed claim is cancelled).
        while (claim := self._claims.get(execution_id)) is not None:
            await asyncio.wait({claim})
            if not claim.cancelled():
                execution = claim.result()
                return await self._wait(execution) if wait else execution
        claim = asyncio.get_running_loop().create_future()
        self._claims[execution_id] = claim
        try:
            try:
                execution = await self.get_execution(execution_id)
            except NotFound:
                execution = await self._start(workflow_id, execution_id, payload)
        except BaseException:
            claim.cancel()
            raise
        finally:
            del self._claims[execution_id]
        claim.set_result(execution)
        return await self._wait(execution) if wait else execution

    async def _start(self, workflow_id: str, execution_id: str, payload: JsonDict) -> Execution:
        """Creates an execution, starts its runner and returns once it is persisted."""
        spec = await self._workflow(workflow_id)
        await self.own(execution_id, starting=True)
        now = self.clock()
        execution = Execution(
            execution_id=execution_id,
            workflow_id=workflow_id,
            workflow_name=spec.name,
            input=payload,
            steps={s.id: StepRun(s.id, s.action, domain_id=s.domain_id) for s in spec.steps},
            created_at=now,
            updated_at=now,
        )
        runner = ExecutionRunner(
            self,
            spec,
            execution,
            [events.event(events.STARTED, events.started(execution), execution)],
            trace_context=telemetry.capture_context(),
        )
        runner._mark("execution.started")
        self._runners[execution_id] = runner
        self.state_changed(None, ExecutionState.RUNNING)
        runner.start()
        await asyncio.shield(runner.first_persist)
        return execution

    async def own(self, execution_id: str, *, starting: bool = False) -> bool:
        """Takes the execution's lease; True when there are leases (False: one instance).

        Raises:
            Aborted: Another instance is starting the same execution (same request id).
            FailedPrecondition: Another instance drives the execution now.
        """
        leases = self.store.leases
        if leases is None:
            return False
        if await leases.acquire(execution_id) is not None:
            return True
        if starting:
            raise Aborted(
                f"execution {execution_id!r} is being started by another orchestrator "
                "instance; call again with the same request_id to get it"
            )
        raise FailedPrecondition(
            f"execution {execution_id!r} is driven by another orchestrator instance now",
            reason="EXECUTION_OWNED_ELSEWHERE",
        )

    async def _wait(self, execution: Execution) -> Execution:
        runner = self._runners.get(execution.execution_id)
        if runner is not None and runner.task is not None:
            await asyncio.wait({runner.task})
        return execution

    async def get_execution(self, execution_id: str) -> Execution:
        """One execution, live or ended.

        Raises:
            NotFound: No such execution.
        """
        runner = self._runners.get(execution_id)
        if runner is not None:
            return runner.ex
        # With several instances, another one may have changed an ended execution since.
        cached = self._recent.get(execution_id) if self.store.leases is None else None
        if cached is not None:
            return cached
        snapshot = await self.store.get_execution(execution_id)
        if snapshot is None:
            raise NotFound("execution", execution_id)
        return Execution.from_json(snapshot)

    async def list_executions(
        self,
        size: int,
        token: str,
        workflow_id: str,
        state: ExecutionState | None,
        size_of: Callable[[Execution], int] = lambda _: 0,
    ) -> tuple[list[Execution], str]:
        """One page of executions (newest first) and the next token.

        `size_of` tells an execution's encoded size in the reply; the page ends early rather
        than exceed `pagination.MAX_PAGE_BYTES`.
        """
        limit = page_size(size)
        position = decode_token(token)
        after = (float(position["t"]), str(position["id"])) if position else None
        snapshots = await self.store.list_executions(
            limit + 1, after, workflow_id, state.value if state else ""
        )
        page, more = take_page([Execution.from_json(s) for s in snapshots], limit, size_of)
        next_token = (
            encode_token({"t": page[-1].created_at, "id": page[-1].execution_id}) if more else ""
        )
        return page, next_token

    async def cancel(self, execution_id: str, reason: str = "") -> Execution:
        """Cancels a running execution; its completed steps are compensated.

        Raises:
            NotFound: No such execution.
        """
        require_text("reason", reason, max_length=512)
        runner = self._runners.get(execution_id)
        if runner is None:
            return await self.get_execution(execution_id)
        execution = runner.ex
        if not execution.cancel_requested and not execution.terminal:
            execution.cancel_requested = True
            if not execution.error:
                execution.error = f"cancelled: {reason}" if reason else "cancelled by request"
            await runner.persist("execution.cancel_requested", sync=True)
            runner.request_cancel()
        return execution

    async def watch(self, execution_id: str) -> AsyncIterator[tuple[JsonDict, str]]:
        """The execution's snapshot, then one per persisted transition, until it ends."""
        execution = await self.get_execution(execution_id)
        queue: asyncio.Queue[tuple[JsonDict, str]] = asyncio.Queue()
        watchers = self._watchers.setdefault(execution_id, set())
        watchers.add(queue)
        try:
            yield execution.to_json(), "snapshot"
            if execution.terminal:
                return
            while True:
                snapshot, label = await queue.get()
                yield snapshot, label
                if ExecutionState(snapshot["state"]) in (
                    ExecutionState.SUCCEEDED,
                    ExecutionState.ROLLED_BACK,
                    ExecutionState.COMPENSATION_FAILED,
                ):
                    return
        finally:
            watchers.discard(queue)
            if not watchers:
                self._watchers.pop(execution_id, None)

    async def proof(self, execution_id: str) -> Proof:
        """The signed proof of an ended execution.

        Raises:
            NotFound: No such execution.
            FailedPrecondition: The execution has not ended yet.
        """
        execution = await self.get_execution(execution_id)
        if not execution.terminal:
            raise FailedPrecondition(
                f"execution {execution_id!r} is {execution.state.value}; "
                "its proof is signed when it ends",
                reason="EXECUTION_NOT_ENDED",
            )
        return Proof(
            execution,
            head_hash(execution_id, execution.records),
            self.signer.public_key,
            self.signer.key_id,
        )

    # -- callbacks from runners ---------------------------------------------------------

    def notify(self, execution: Execution, snapshot: JsonDict, label: str) -> None:
        """Hands a persisted transition to the execution's watchers."""
        for queue in self._watchers.get(execution.execution_id, ()):
            queue.put_nowait((snapshot, label))

    def state_changed(self, old: ExecutionState | None, new: ExecutionState) -> None:
        """Keeps the by-state counts current."""
        by_state = self.stats.by_state
        if old is not None:
            by_state[old.value] = max(0, by_state.get(old.value, 0) - 1)
        by_state[new.value] = by_state.get(new.value, 0) + 1

    def runner_done(self, runner: ExecutionRunner) -> None:
        """Moves an ended execution out of the live set."""
        execution = runner.ex
        if runner.lost:
            if self._runners.get(execution.execution_id) is runner:
                del self._runners[execution.execution_id]
            return
        if not execution.terminal:
            return
        self._runners.pop(execution.execution_id, None)
        if self.store.leases is not None:
            self.store.leases.drop(execution.execution_id)
        else:
            self._recent.put(execution)
        self.rounds.schedule(execution)

    def is_live(self, execution_id: str) -> bool:
        """True while a runner drives the execution."""
        return execution_id in self._runners

    def run(self, runner: ExecutionRunner) -> None:
        """Makes an ended execution live again with `runner` (a new compensation round)."""
        execution_id = runner.ex.execution_id
        self._recent.pop(execution_id)
        self._runners[execution_id] = runner
        runner.start()

    def remember(self, execution: Execution) -> None:
        """Replaces the cached copy of an ended execution that changed (abandoned)."""
        if execution.execution_id in self._recent:
            self._recent.put(execution)

    @property
    def running(self) -> int:
        """Executions that have not ended."""
        return len(self._runners)
