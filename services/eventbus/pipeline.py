"""An ordered pipeline with a window: the server side of a publish stream.

A publisher on a stream sends messages without waiting for each answer. The bus must
still store them in the order they came and answer them in that order, each only once it
is durable, and it must not read ahead without bound (a fast publisher would fill its
memory). `pipelined` reads a message, starts it (admission, then hand-off to the group
committer, in arrival order) and reads the next while earlier ones commit; answers leave
in order as their commits finish. Reading stops while `window_events` events (or
`window_messages` messages) are unanswered, so HTTP/2 flow control holds the publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_WINDOW_EVENTS = 8192
DEFAULT_WINDOW_MESSAGES = 1024


class _End:
    """Marks the end of the messages (or the error that ended them)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class _Window(Generic[R]):
    """Started messages in arrival order, and the room left for more."""

    def __init__(self, events: int, messages: int) -> None:
        self.events_limit = events
        self.messages_limit = messages
        self.events = 0
        self.started: asyncio.Queue[tuple[int, asyncio.Future[R]] | _End] = asyncio.Queue()
        self._room = asyncio.Event()

    def full(self) -> bool:
        return self.events >= self.events_limit or self.started.qsize() >= self.messages_limit

    async def wait_for_room(self) -> None:
        while self.full():
            self._room.clear()
            await self._room.wait()

    def freed(self, events: int) -> None:
        self.events -= events
        self._room.set()


async def pipelined(
    messages: AsyncIterator[T],
    start: Callable[[T], Awaitable[tuple[int, asyncio.Future[R]]]],
    *,
    window_events: int = DEFAULT_WINDOW_EVENTS,
    window_messages: int = DEFAULT_WINDOW_MESSAGES,
) -> AsyncIterator[R]:
    """Yields each message's result, in arrival order, once its future resolved.

    Args:
        messages: The incoming messages.
        start: Admits one message and starts storing it; returns how many events it holds
            and a future of its answer. Called in arrival order, one at a time, so what it
            hands to the log before returning keeps that order.
        window_events: Reading stops while this many events are started and not yet
            answered (so at most one message more may be in flight).
        window_messages: Most messages started and not yet answered.

    The first error (reading, admitting or storing a message) ends the pipeline after the
    answers of the messages before it; what was started after it is stored or not, and the
    publisher re-sends it (ids make that safe).
    """
    window: _Window[R] = _Window(window_events, window_messages)

    async def read() -> None:
        iterator = aiter(messages)
        try:
            while True:
                # Room first, then read: what is not read stays with the transport.
                await window.wait_for_room()
                try:
                    message = await anext(iterator)
                except StopAsyncIteration:
                    break
                size, future = await start(message)
                window.events += size
                window.started.put_nowait((size, future))
        except Exception as exc:
            window.started.put_nowait(_End(exc))
            return
        window.started.put_nowait(_End())

    reader = asyncio.create_task(read(), name="publish-stream-reader")
    pending: list[asyncio.Future[R]] = []
    try:
        while True:
            item = await window.started.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            size, future = item
            pending.append(future)
            result = await future
            pending.pop()
            window.freed(size)
            yield result
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        # Whatever was started and not answered: its commit stands or fails on its own; no
        # one waits for it any more.
        while not window.started.empty():
            item = window.started.get_nowait()
            if not isinstance(item, _End):
                pending.append(item[1])
        for future in pending:
            if not future.done():
                future.cancel()
            else:
                with contextlib.suppress(BaseException):
                    future.exception()  # retrieved: not logged as never retrieved
