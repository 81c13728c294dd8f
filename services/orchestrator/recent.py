"""The ended executions an orchestrator keeps in memory for fast reads, compact."""

from __future__ import annotations

import logging
from collections import OrderedDict

from services.orchestrator.model import Execution

log = logging.getLogger(__name__)


class EndedExecutions:
    """The executions that ended last, kept compact for fast reads.

    Each is kept as `Execution.to_compact` bytes: about 2 kB for a typical 3-step
    workflow, where the objects took about 15 kB (step inputs and outputs, proof records).
    A read rebuilds it (tens of microseconds, where a read from the store takes about a
    millisecond), so every reader gets a copy of its own to change. The oldest ended go
    first past either bound: a count, and bytes. The bytes bound holds however large
    executions' inputs and outputs are (a count alone lets a thousand large executions
    take gigabytes), and the compact form makes each one's size exact and free to tell.
    An execution that is not kept is read from the store.

    Args:
        max_count: Most executions kept.
        max_bytes: Most bytes kept; an execution larger than this alone is not kept.
    """

    def __init__(self, max_count: int, max_bytes: int) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._kept: OrderedDict[str, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def __contains__(self, execution_id: str) -> bool:
        return execution_id in self._kept

    def get(self, execution_id: str) -> Execution | None:
        """A new copy of the kept execution, or None."""
        data = self._kept.get(execution_id)
        return None if data is None else Execution.from_compact(data)

    def put(self, execution: Execution) -> None:
        """Keeps an ended execution as the newest (replacing a copy kept before)."""
        self.pop(execution.execution_id)
        try:
            data = execution.to_compact()
        except ValueError as exc:
            log.warning("ended execution %s not cached: %s", execution.execution_id, exc)
            return
        if len(data) > self.max_bytes:
            return
        self._kept[execution.execution_id] = data
        self.nbytes += len(data)
        while len(self._kept) > self.max_count or self.nbytes > self.max_bytes:
            _, dropped = self._kept.popitem(last=False)
            self.nbytes -= len(dropped)

    def pop(self, execution_id: str) -> None:
        """Forgets an execution (nothing if it is not kept)."""
        dropped = self._kept.pop(execution_id, None)
        if dropped is not None:
            self.nbytes -= len(dropped)

    def clear(self) -> None:
        """Forgets every execution."""
        self._kept.clear()
        self.nbytes = 0
