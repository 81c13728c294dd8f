"""Children of a supervisor do not outlive it.

Guardian gives each component `GRACE_SUPERVISOR_PID`. If Guardian dies without stopping its
children (SIGKILL, a crash), they are re-parented; a component that notices its parent
changed shuts down gracefully instead of holding its port as an orphan that the next
`grace up` would collide with.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

SUPERVISOR_PID_ENV = "GRACE_SUPERVISOR_PID"


async def watch_supervisor(
    env: Mapping[str, str], on_gone: Callable[[], None], *, interval_s: float = 1.0
) -> None:
    """Calls `on_gone` once when the supervisor named in `env` is no longer the parent.

    Returns at once when no supervisor is named (a server started by hand or by tests).
    """
    text = env.get(SUPERVISOR_PID_ENV, "")
    if not text.isdigit():
        return
    supervisor = int(text)
    # Nothing signals a re-parenting, so the parent pid is polled (cheap, once a second).
    while os.getppid() == supervisor:  # noqa: ASYNC110
        await asyncio.sleep(interval_s)
    log.warning("supervisor (pid %d) is gone; shutting down", supervisor)
    on_gone()
