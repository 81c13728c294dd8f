"""`grace tasks`: the operator's side of seed 002's loop, over the tasks kernel's RPCs.

`grace tasks list [--state pending-approval]`, `grace tasks show ID`,
`grace tasks approve ID --as NAME [--reason TEXT]`, `grace tasks reject ID --as NAME`,
`grace tasks retry ID --as NAME`, `grace tasks cycle [--reason TEXT]`. The approver (`--as`)
is sent as `x-actor`; governance refuses the requester itself.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from grace.kernels.tasks.v1 import tasks_pb2 as pb
from grace.kernels.tasks.v1 import tasks_pb2_grpc
from services.common.channels import channel
from services.common.config import peer_address

EXIT_OK = 0
EXIT_NOT_OK = 1
EXIT_UNREACHABLE = 2
_TIMEOUT_S = 60.0
STATES = (
    "pending-approval",
    "approved",
    "rejected",
    "dispatched",
    "running",
    "completed",
    "failed",
)

if TYPE_CHECKING:
    Call: TypeAlias = Callable[[tasks_pb2_grpc.TasksServiceAsyncStub], Awaitable[str]]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `grace tasks ...`."""
    tasks = subparsers.add_parser("tasks", help="list, approve, reject and retry the loop's tasks")
    commands = tasks.add_subparsers(dest="tasks_command", required=True, metavar="ACTION")

    listing = commands.add_parser("list", help="tasks, newest first")
    listing.add_argument("--state", choices=STATES, help="only tasks in this state")
    _common(listing, lambda a: lambda s: _list(s, a.state or ""))

    show = commands.add_parser("show", help="one task with its history")
    show.add_argument("task_id")
    _common(show, lambda a: lambda s: _show(s, a.task_id))

    for name, help_text in (
        ("approve", "approve a pending task (it then runs once)"),
        ("reject", "reject a pending task"),
        ("retry", "put a failed task to governance again"),
    ):
        settle = commands.add_parser(name, help=help_text)
        settle.add_argument("task_id")
        settle.add_argument("--as", dest="actor", required=True, help="who you are (x-actor)")
        settle.add_argument("--reason", default="", help="why")
        _common(settle, _settler(name))

    cycle = commands.add_parser("cycle", help="run an analysis cycle now")
    cycle.add_argument("--reason", default="", help="why (recorded with the cycle)")
    _common(cycle, lambda a: lambda s: _cycle(s, a.reason))


def _settler(verb: str) -> Callable[[argparse.Namespace], Call]:
    def build(args: argparse.Namespace) -> Call:
        return lambda stub: _settle(stub, verb, args)

    return build


def _common(parser: argparse.ArgumentParser, build: Callable[[argparse.Namespace], Call]) -> None:
    parser.add_argument(
        "--tasks", help="the tasks kernel's host:port (GRACE_TASKS_ADDR, default 127.0.0.1:8121)"
    )
    parser.set_defaults(handler=lambda args: asyncio.run(_run(_target(args), build(args))))


def _target(args: argparse.Namespace) -> str:
    return str(args.tasks or peer_address(os.environ, "tasks"))


async def _run(target: str, call: Call) -> int:
    async with channel(target) as chan:
        try:
            print(await call(tasks_pb2_grpc.TasksServiceStub(chan)))
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                print(f"grace: no tasks kernel answers on {target}", file=sys.stderr)
                return EXIT_UNREACHABLE
            print(f"grace: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return EXIT_NOT_OK
    return EXIT_OK


def _state(value: Any) -> str:
    return str(pb.TaskState.Name(value)).removeprefix("TASK_STATE_").lower().replace("_", "-")


def _line(task: pb.Task) -> str:
    return f"{task.task_id}  {_state(task.state):<16} {task.remedy} on {task.target}: {task.reason}"


async def _list(stub: tasks_pb2_grpc.TasksServiceAsyncStub, state: str) -> str:
    wanted = pb.TaskState.Value("TASK_STATE_" + (state or "unspecified").upper().replace("-", "_"))
    page = await stub.ListTasks(pb.ListTasksRequest(state=wanted), timeout=_TIMEOUT_S)
    return "\n".join(_line(t) for t in page.tasks) or "no tasks"


async def _show(stub: tasks_pb2_grpc.TasksServiceAsyncStub, task_id: str) -> str:
    task = (await stub.GetTask(pb.GetTaskRequest(task_id=task_id), timeout=_TIMEOUT_S)).task
    history = [f"  {_state(h.state):<16} by {h.actor}: {h.reason}" for h in task.history]
    return "\n".join([_line(task), f"  weak point {task.weak_point.key}", *history])


async def _settle(
    stub: tasks_pb2_grpc.TasksServiceAsyncStub, verb: str, args: argparse.Namespace
) -> str:
    metadata = [("x-actor", args.actor)]
    if verb == "approve":
        task = (
            await stub.ApproveTask(
                pb.ApproveTaskRequest(task_id=args.task_id, reason=args.reason),
                timeout=_TIMEOUT_S,
                metadata=metadata,
            )
        ).task
    elif verb == "reject":
        task = (
            await stub.RejectTask(
                pb.RejectTaskRequest(task_id=args.task_id, reason=args.reason),
                timeout=_TIMEOUT_S,
                metadata=metadata,
            )
        ).task
    else:
        task = (
            await stub.RetryTask(
                pb.RetryTaskRequest(task_id=args.task_id), timeout=_TIMEOUT_S, metadata=metadata
            )
        ).task
    return _line(task)


async def _cycle(stub: tasks_pb2_grpc.TasksServiceAsyncStub, reason: str) -> str:
    ran = await stub.RunCycle(pb.RunCycleRequest(reason=reason), timeout=_TIMEOUT_S)
    cycle = ran.cycle
    lines = [f"cycle {cycle.cycle_id}" + (" (degraded)" if cycle.degraded else "")]
    lines += [f"  weak point {w.key}: {w.reason}" for w in cycle.weak_points]
    lines += [
        f"  judged {e.task_id}: {'fixed' if e.fixed else 'not fixed'} {e.weak_point}"
        for e in cycle.evaluations
    ]
    lines += ["  task " + _line(t) for t in ran.tasks]
    return "\n".join(lines)
