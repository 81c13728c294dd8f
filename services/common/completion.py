"""Changes that run to their end even when their caller goes away.

grpc.aio cancels an RPC's handler when its client cancels or its deadline passes. A handler
that stores a change and then updates what the service keeps in memory (starts a worker,
indexes a key, enforces a policy) can be cancelled between the two: storage and memory then
disagree until a restart (a key stored but unknown, so every retry fails on its unique id;
a rule deleted but still firing). `@runs_to_completion` runs such a method in a task of its
own, shielded from its caller's cancellation: the caller stops waiting, the change ends.

The tasks are the process's: `GraceServer` waits for them (`drain`) after its RPCs have
drained and before the service closes its storage, so a change is never cut off by a
shutdown either.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from services.common.errors import GraceError

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_running: set[asyncio.Task[Any]] = set()


async def run_to_completion(change: Coroutine[Any, Any, T]) -> T:
    """Awaits `change` in a task of its own, which a cancellation of the caller does not
    cancel. Its result or error goes to the caller while it still waits."""
    task = asyncio.ensure_future(change)
    _running.add(task)
    task.add_done_callback(_running.discard)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            task.add_done_callback(_log_failure)
        raise


def runs_to_completion(
    function: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Decorates an async function (or method) whose steps must all happen once begun."""

    @functools.wraps(function)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        return await run_to_completion(function(*args, **kwargs))

    return wrapper


def _log_failure(task: asyncio.Task[Any]) -> None:
    # Its caller has gone: nobody but the log can tell of its failure. A refusal (a
    # GraceError: not found, a failed precondition) is an answer nobody waits for any more.
    if task.cancelled() or (error := task.exception()) is None:
        return
    if isinstance(error, GraceError):
        log.info("%r refused after its caller had gone: %s", task, error)
    else:
        log.error("%r failed after its caller had gone", task, exc_info=error)


async def drain(timeout_s: float = 30.0) -> None:
    """Waits for every change still running in this process, for at most `timeout_s`."""
    if not _running:
        return
    _, pending = await asyncio.wait(set(_running), timeout=timeout_s)
    for task in pending:
        log.warning("a change did not finish within %.0fs of the shutdown: %r", timeout_s, task)
