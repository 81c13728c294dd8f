"""Where Guardian's decisions go: the log, its store, and (through the outbox) the bus.

A decision is logged first, so it is never lost even when the store fails; then stored
with its `healing.*` event in one transaction, and the outbox relay is woken to publish it.
A failing store is logged and never stops the supervisor.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from services.guardian.process import ChildProcess
from services.guardian.store import GuardianStore

log = logging.getLogger(__name__)

_LEVELS = {
    "healing.started": logging.WARNING,
    "healing.completed": logging.INFO,
    "healing.failed": logging.ERROR,
    "healing.denied": logging.WARNING,
}


class Journal:
    """Logs and records decisions.

    Args:
        store: Guardian's store; None keeps decisions in the log only.
        on_recorded: Called after an event is stored (wakes the outbox relay).
    """

    def __init__(
        self, store: GuardianStore | None, on_recorded: Callable[[], None] | None = None
    ) -> None:
        self.store = store
        self._on_recorded = on_recorded
        self._pending: set[asyncio.Task[None]] = set()

    async def decide(self, event_type: str, component: str, **data: Any) -> None:
        """Logs a decision and records it with its event."""
        details = " ".join(f"{key}={value}" for key, value in data.items())
        log.log(_LEVELS.get(event_type, logging.INFO), "%s %s %s", event_type, component, details)
        if self.store is None:
            return
        try:
            await self.store.record_decision(event_type, component, data)
        except Exception:
            log.exception("could not record %s for %s", event_type, component)
            return
        if self._on_recorded is not None:
            self._on_recorded()

    def decide_soon(self, event_type: str, component: str, **data: Any) -> None:
        """`decide` from synchronous code (a probe callback)."""
        task = asyncio.get_running_loop().create_task(self.decide(event_type, component, **data))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def spawned(self, proc: ChildProcess, component: str, port: int) -> None:
        """Records a process Guardian started, so clear_port can recognise it later."""
        if self.store is None or proc.start_ticks is None:
            return
        try:
            await self.store.record_spawn(proc.pid, proc.start_ticks, component, port)
        except Exception:
            log.exception("could not record the spawn of %s (pid %d)", component, proc.pid)

    async def flush(self) -> None:
        """Waits for decisions still being recorded."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
