"""Waiting for an event with a time limit, without losing a cancellation.

On Python 3.11, `asyncio.wait_for(event.wait(), timeout)` returns normally when the event
is set in the same loop iteration in which the waiting task is cancelled: the cancellation
is swallowed. A background loop that waits this way between rounds (an outbox relay, a
registration retry) can then survive `task.cancel()` and keep its owner's shutdown waiting
forever. `asyncio.timeout` counts cancellations and re-raises the external one.
"""

from __future__ import annotations

import asyncio


async def wait_for_event(event: asyncio.Event, timeout_s: float) -> bool:
    """Waits until `event` is set or `timeout_s` passes; True when it was set.

    A cancellation of the calling task always propagates.
    """
    try:
        async with asyncio.timeout(max(0.0, timeout_s)):
            await event.wait()
    except TimeoutError:
        return False
    return True
