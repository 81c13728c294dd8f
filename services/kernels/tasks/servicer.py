"""gRPC adapter of the tasks kernel: proto in, core call, proto out."""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

from grace.kernels.tasks.v1 import tasks_pb2 as pb
from grace.kernels.tasks.v1 import tasks_pb2_grpc
from services.common.auth import acting_for
from services.common.timestamps import to_timestamp
from services.kernels.domain import dict_to_struct
from services.kernels.immune.model import PlaybookScore
from services.kernels.tasks.halo import Halo
from services.kernels.tasks.model import Cycle, Severity, Task, TaskState, WeakPoint
from services.kernels.tasks.squad import Squad

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

STATE_TO_PROTO = {s: pb.TaskState.Value(f"TASK_STATE_{s.name}") for s in TaskState}
STATE_FROM_PROTO = {v: k for k, v in STATE_TO_PROTO.items()}
SEVERITY_TO_PROTO = {s: pb.Severity.Value(f"SEVERITY_{s.name}") for s in Severity}


def caller(context: Context) -> str:
    """Who calls: the authenticated principal (a Grace component, or an insecure Grace,
    may name it in `x-actor`; see `acting_for`); "" when nobody is named."""
    claimed = ""
    for key, value in context.invocation_metadata() or ():
        if key == "x-actor" and isinstance(value, str):
            claimed = value.strip()
    return acting_for(claimed)


def weak_point_to_proto(w: WeakPoint) -> pb.WeakPoint:
    """The wire form of a weak point."""
    return pb.WeakPoint(
        key=w.key,
        kind=w.kind,
        target=w.target,
        severity=SEVERITY_TO_PROTO[w.severity],
        reason=w.reason,
        evidence=dict_to_struct(w.evidence),
    )


def score_to_proto(s: PlaybookScore) -> pb.RemedyScore:
    """The wire form of a remedy's record."""
    return pb.RemedyScore(
        remedy=s.playbook, successes=s.successes, failures=s.failures, score=s.score
    )


def cycle_to_proto(c: Cycle) -> pb.Cycle:
    """The wire form of a cycle."""
    return pb.Cycle(
        cycle_id=c.cycle_id,
        trigger=c.trigger,
        trigger_detail=c.trigger_detail,
        sources=[
            pb.SourceStatus(name=s.name, ok=s.ok, error=s.error, items=s.items) for s in c.sources
        ],
        degraded=c.degraded,
        weak_points=[weak_point_to_proto(w) for w in c.weak_points],
        proposals=[
            pb.Proposal(
                weak_point=p.weak_point,
                candidates=[score_to_proto(s) for s in p.candidates],
                task_id=p.task_id,
                skipped=p.skipped,
            )
            for p in c.proposals
        ],
        evaluations=[
            pb.Evaluation(
                task_id=e.task_id, weak_point=e.weak_point, remedy=e.remedy, fixed=e.fixed
            )
            for e in c.evaluations
        ],
        started_at=to_timestamp(c.started_at),
        finished_at=to_timestamp(c.finished_at),
    )


def task_to_proto(t: Task) -> pb.Task:
    """The wire form of a task."""
    return pb.Task(
        task_id=t.task_id,
        cycle_id=t.cycle_id,
        weak_point=weak_point_to_proto(t.weak_point),
        remedy=t.remedy,
        target=t.target,
        risk=t.risk,
        reason=t.reason,
        state=STATE_TO_PROTO[t.state],
        decision_id=t.decision_id,
        approval_id=t.approval_id,
        attempts=t.attempts,
        result=dict_to_struct(t.result),
        error=t.error,
        history=[
            pb.Transition(
                state=STATE_TO_PROTO[h.state],
                time=to_timestamp(h.time),
                actor=h.actor,
                reason=h.reason,
            )
            for h in t.history
        ],
        created_at=to_timestamp(t.created_at),
        updated_at=to_timestamp(t.updated_at),
    )


class TasksServicer(tasks_pb2_grpc.TasksServiceServicer):
    """Serves `grace.kernels.tasks.v1.TasksService` over the `Halo` and `Squad` cores."""

    def __init__(self, halo: Halo, squad: Squad) -> None:
        self._halo = halo
        self._squad = squad

    async def RunCycle(self, request: pb.RunCycleRequest, context: Context) -> pb.RunCycleResponse:
        who = caller(context)
        detail = request.reason or (f"asked by {who}" if who else "")
        cycle, tasks = await self._halo.run_cycle("operator", detail)
        return pb.RunCycleResponse(
            cycle=cycle_to_proto(cycle), tasks=[task_to_proto(t) for t in tasks]
        )

    async def ListCycles(
        self, request: pb.ListCyclesRequest, context: Context
    ) -> pb.ListCyclesResponse:
        cycles, token = await self._halo.list_cycles(request.page_size, request.page_token)
        return pb.ListCyclesResponse(
            cycles=[cycle_to_proto(c) for c in cycles], next_page_token=token
        )

    async def GetCycle(self, request: pb.GetCycleRequest, context: Context) -> pb.GetCycleResponse:
        return pb.GetCycleResponse(
            cycle=cycle_to_proto(await self._halo.get_cycle(request.cycle_id))
        )

    async def ListTasks(
        self, request: pb.ListTasksRequest, context: Context
    ) -> pb.ListTasksResponse:
        state = STATE_FROM_PROTO.get(request.state)
        tasks, token = await self._squad.list(
            state, request.cycle_id, request.page_size, request.page_token
        )
        return pb.ListTasksResponse(tasks=[task_to_proto(t) for t in tasks], next_page_token=token)

    async def GetTask(self, request: pb.GetTaskRequest, context: Context) -> pb.GetTaskResponse:
        return pb.GetTaskResponse(task=task_to_proto(await self._squad.get(request.task_id)))

    async def ApproveTask(
        self, request: pb.ApproveTaskRequest, context: Context
    ) -> pb.ApproveTaskResponse:
        task = await self._squad.approve(request.task_id, caller(context), request.reason)
        return pb.ApproveTaskResponse(task=task_to_proto(task))

    async def RejectTask(
        self, request: pb.RejectTaskRequest, context: Context
    ) -> pb.RejectTaskResponse:
        task = await self._squad.reject(request.task_id, caller(context), request.reason)
        return pb.RejectTaskResponse(task=task_to_proto(task))

    async def RetryTask(
        self, request: pb.RetryTaskRequest, context: Context
    ) -> pb.RetryTaskResponse:
        task = await self._squad.retry(request.task_id, caller(context))
        return pb.RetryTaskResponse(task=task_to_proto(task))

    async def GetTasksStats(
        self, request: pb.GetTasksStatsRequest, context: Context
    ) -> pb.GetTasksStatsResponse:
        stats = await self._halo.stats()
        return pb.GetTasksStatsResponse(
            cycles=stats.cycles,
            tasks_by_state={
                pb.TaskState.Name(STATE_TO_PROTO[TaskState(k)]): n
                for k, n in stats.tasks_by_state.items()
            },
            outcomes=[
                pb.OutcomeRecord(kind=kind, remedy=score_to_proto(s)) for kind, s in stats.outcomes
            ],
            trigger_events=stats.trigger_events,
        )
