"""`grace tasks list|show|approve|reject|retry|cycle`: the operator's side of seed 002's loop.

Approving or rejecting a task settles its governance approval: the approver (`--approver`,
sent as `x-actor`) is recorded, and governance refuses the requester itself.
"""

from __future__ import annotations

import getpass
from typing import Any

import click
import grpc

from grace.kernels.tasks.v1 import tasks_pb2 as pb
from grace.kernels.tasks.v1 import tasks_pb2_grpc
from services.cli.output import Column, path, to_data
from services.cli.session import CALL_TIMEOUT_S, common_options, session

STATES = (
    "pending-approval",
    "approved",
    "rejected",
    "dispatched",
    "running",
    "completed",
    "failed",
)
PAGE_SIZE = 200
MAX_LIST = 10_000

TASK_COLUMNS = (
    Column("TASK", path("task_id")),
    Column("STATE", path("state", "TASK_STATE_"), styled=True),
    Column("REMEDY", path("remedy")),
    Column("TARGET", path("target")),
    Column("RISK", path("risk_level", "RISK_LEVEL_")),
    Column("REASON", path("reason")),
)


def register(cli: click.Group) -> None:
    """Adds `grace tasks`."""
    cli.add_command(tasks)


def _stub(chan: grpc.aio.Channel) -> tasks_pb2_grpc.TasksServiceAsyncStub:
    return tasks_pb2_grpc.TasksServiceStub(chan)


def _state_value(state: str) -> Any:
    return pb.TaskState.Value("TASK_STATE_" + (state or "unspecified").upper().replace("-", "_"))


@click.group()
def tasks() -> None:
    """Tasks proposed by analysis cycles: list, approve, reject, retry, run a cycle."""


@tasks.command("list")
@click.option("--state", type=click.Choice(STATES), default=None, help="Only tasks in this state.")
@click.option("--limit", type=click.IntRange(1, MAX_LIST), default=100, show_default=True)
@common_options
def list_tasks(state: str | None, limit: int) -> None:
    """List tasks, newest first."""
    s = session()

    async def ask(chan: grpc.aio.Channel) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        token = ""
        while len(found) < limit:
            page = await _stub(chan).ListTasks(
                pb.ListTasksRequest(
                    state=_state_value(state or ""),
                    page_size=min(PAGE_SIZE, limit - len(found)),
                    page_token=token,
                ),
                timeout=CALL_TIMEOUT_S,
            )
            found.extend(to_data(t) for t in page.tasks)
            token = page.next_page_token
            if not token:
                break
        return found

    s.printer.items(s.call("tasks", ask), TASK_COLUMNS)


@tasks.command()
@click.argument("task_id")
@common_options
def show(task_id: str) -> None:
    """One task with its history."""
    s = session()

    async def ask(chan: grpc.aio.Channel) -> pb.Task:
        return (
            await _stub(chan).GetTask(pb.GetTaskRequest(task_id=task_id), timeout=CALL_TIMEOUT_S)
        ).task

    task = s.call("tasks", ask)
    if not s.printer.is_table:
        s.printer.data(to_data(task))
        return
    s.printer.items([to_data(task)], TASK_COLUMNS)
    s.printer.line(f"weak point: {task.weak_point.key}")
    for entry in task.history:
        state = pb.TaskState.Name(entry.state).removeprefix("TASK_STATE_").lower()
        s.printer.line(f"  {state:<16} by {entry.actor}: {entry.reason}")


def _approver_option(function: Any) -> Any:
    return click.option(
        "--approver",
        "--as",
        "approver",
        default=lambda: f"user:{getpass.getuser()}",
        show_default="user:$USER",
        help="Who decides (recorded; never the requester).",
    )(function)


@tasks.command()
@click.argument("task_id")
@click.option("--reason", default="", help="Why (recorded with the decision).")
@_approver_option
@common_options
def approve(task_id: str, reason: str, approver: str) -> None:
    """Approve a pending task: it is then dispatched, once."""
    _settle(
        task_id,
        approver,
        lambda stub, md: stub.ApproveTask(
            pb.ApproveTaskRequest(task_id=task_id, reason=reason),
            timeout=CALL_TIMEOUT_S,
            metadata=md,
        ),
    )


@tasks.command()
@click.argument("task_id")
@click.option("--reason", required=True, help="Why (recorded with the decision).")
@_approver_option
@common_options
def reject(task_id: str, reason: str, approver: str) -> None:
    """Reject a pending task, with a reason."""
    _settle(
        task_id,
        approver,
        lambda stub, md: stub.RejectTask(
            pb.RejectTaskRequest(task_id=task_id, reason=reason),
            timeout=CALL_TIMEOUT_S,
            metadata=md,
        ),
    )


@tasks.command()
@click.argument("task_id")
@_approver_option
@common_options
def retry(task_id: str, approver: str) -> None:
    """Put a failed task to governance again."""
    _settle(
        task_id,
        approver,
        lambda stub, md: stub.RetryTask(
            pb.RetryTaskRequest(task_id=task_id), timeout=CALL_TIMEOUT_S, metadata=md
        ),
    )


def _settle(task_id: str, actor: str, request: Any) -> None:
    s = session()

    async def ask(chan: grpc.aio.Channel) -> pb.Task:
        answered = await request(_stub(chan), [("x-actor", actor)])
        task: pb.Task = answered.task
        return task

    task = to_data(s.call("tasks", ask))
    if s.printer.is_table:
        state = str(task.get("state", "")).removeprefix("TASK_STATE_").lower()
        s.printer.line(f"{task_id}: {state}")
    else:
        s.printer.data(task)


@tasks.command()
@click.option("--reason", default="", help="Why (recorded with the cycle).")
@common_options
def cycle(reason: str) -> None:
    """Run an analysis cycle now; prints its weak points and the tasks it proposed."""
    s = session()

    async def ask(chan: grpc.aio.Channel) -> pb.RunCycleResponse:
        return await _stub(chan).RunCycle(pb.RunCycleRequest(reason=reason), timeout=CALL_TIMEOUT_S)

    ran = s.call("tasks", ask, waiting="analysing")
    if not s.printer.is_table:
        s.printer.data(to_data(ran))
        return
    degraded = " (degraded)" if ran.cycle.degraded else ""
    s.printer.line(f"cycle {ran.cycle.cycle_id}{degraded}")
    for weak in ran.cycle.weak_points:
        s.printer.line(f"  weak point {weak.key}: {weak.reason}")
    for judged in ran.cycle.evaluations:
        verdict = "fixed" if judged.fixed else "not fixed"
        s.printer.line(f"  judged {judged.task_id}: {verdict} {judged.weak_point}")
    s.printer.items([to_data(t) for t in ran.tasks], TASK_COLUMNS)
