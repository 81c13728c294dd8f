"""Waiting for an event with a time limit never loses a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from services.common.waiting import wait_for_event


async def test_returns_true_when_set_and_false_on_timeout() -> None:
    event = asyncio.Event()
    assert not await wait_for_event(event, 0.01)
    event.set()
    assert await wait_for_event(event, 1)


async def test_a_cancellation_racing_the_event_is_not_swallowed() -> None:
    # The event is set and the waiter cancelled in the same loop iteration: the shape of
    # an outbox relay woken by a commit just as its owner shuts down.
    event = asyncio.Event()
    task = asyncio.create_task(wait_for_event(event, 10))
    await asyncio.sleep(0)
    event.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
