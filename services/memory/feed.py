"""In-process fan-out of committed changes to `WatchContributions` streams.

Each watcher has its own queue, so a slow watcher never delays a write or another
watcher. A watcher that falls more than `buffer` changes behind is cut off (its stream
ends with RESOURCE_EXHAUSTED) rather than holding memory without bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from services.common.errors import ResourceExhausted
from services.common.patterns import matches
from services.memory.model import Change

_CLOSED = object()
_OVERFLOW = object()


class _Watcher:
    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.cut = False


class Feed:
    """Delivers changes to every watcher whose pattern matches the contribution type.

    Args:
        buffer: Most changes a watcher may have pending before it is cut off.
    """

    def __init__(self, buffer: int) -> None:
        self.buffer = buffer
        self._watchers: set[_Watcher] = set()
        self._closed = False

    @property
    def watchers(self) -> int:
        """How many streams are watching."""
        return len(self._watchers)

    def publish(self, change: Change) -> None:
        """Queues a committed change for every matching watcher."""
        for watcher in self._watchers:
            if watcher.cut or not matches(watcher.pattern, change.contribution.contribution_type):
                continue
            if watcher.queue.qsize() >= self.buffer:
                watcher.cut = True
                watcher.queue.put_nowait(_OVERFLOW)
            else:
                watcher.queue.put_nowait(change)

    async def watch(self, pattern: str) -> AsyncIterator[Change]:
        """Yields matching changes as they commit until `close` (or the caller stops)."""
        watcher = _Watcher(pattern)
        if self._closed:
            return
        self._watchers.add(watcher)
        try:
            while True:
                item = await watcher.queue.get()
                if item is _CLOSED:
                    return
                if item is _OVERFLOW:
                    raise ResourceExhausted(
                        f"watcher fell more than {self.buffer} changes behind; reconnect",
                        reason="WATCHER_TOO_SLOW",
                    )
                assert isinstance(item, Change)
                yield item
        finally:
            self._watchers.discard(watcher)

    def close(self) -> None:
        """Ends every stream (at shutdown); later watches end at once."""
        self._closed = True
        for watcher in self._watchers:
            watcher.queue.put_nowait(_CLOSED)
