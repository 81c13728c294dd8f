"""The publish stream's pipeline: answers in arrival order, bounded read-ahead, errors in place."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.eventbus.pipeline import pipelined


async def messages(items: list[int], read: list[int]) -> AsyncIterator[int]:
    for item in items:
        read.append(item)
        yield item


async def test_answers_leave_in_arrival_order_even_when_later_ones_finish_first() -> None:
    loop = asyncio.get_running_loop()
    futures: dict[int, asyncio.Future[str]] = {}
    started: list[int] = []

    async def start(item: int) -> tuple[int, asyncio.Future[str]]:
        started.append(item)
        futures[item] = loop.create_future()
        if item == 2:
            # Finish in reverse once all three are in flight.
            for n in (2, 1, 0):
                futures[n].set_result(f"answer {n}")
        return 1, futures[item]

    got = [answer async for answer in pipelined(messages([0, 1, 2], []), start)]
    assert started == [0, 1, 2]
    assert got == ["answer 0", "answer 1", "answer 2"]


async def test_reading_stops_while_the_window_is_full() -> None:
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[int]] = []
    read: list[int] = []

    async def start(item: int) -> tuple[int, asyncio.Future[int]]:
        futures.append(loop.create_future())
        return 10, futures[-1]

    answers = pipelined(messages(list(range(10)), read), start, window_events=25)
    first = asyncio.ensure_future(anext(answers))
    for _ in range(20):
        await asyncio.sleep(0)
    # 30 events are in flight, past the window of 25: the fourth message is not read.
    assert len(futures) == 3
    assert read == [0, 1, 2]
    futures[0].set_result(0)
    assert await first == 0
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(futures) == 4  # one answered, one more read
    for n, future in enumerate(futures[1:], 1):
        future.set_result(n)
    await answers.aclose()


async def test_a_failed_message_ends_the_stream_after_the_answers_before_it() -> None:
    loop = asyncio.get_running_loop()

    async def start(item: int) -> tuple[int, asyncio.Future[int]]:
        future: asyncio.Future[int] = loop.create_future()
        if item == 1:
            future.set_exception(RuntimeError("commit failed"))
        else:
            future.set_result(item)
        return 1, future

    answers = pipelined(messages([0, 1, 2], []), start)
    assert await anext(answers) == 0
    with pytest.raises(RuntimeError, match="commit failed"):
        await anext(answers)


async def test_a_refused_admission_fails_in_its_place() -> None:
    loop = asyncio.get_running_loop()

    async def start(item: int) -> tuple[int, asyncio.Future[int]]:
        if item == 2:
            raise ValueError("too many events")
        future: asyncio.Future[int] = loop.create_future()
        future.set_result(item)
        return 1, future

    answers = pipelined(messages([0, 1, 2, 3], []), start)
    assert [await anext(answers), await anext(answers)] == [0, 1]
    with pytest.raises(ValueError, match="too many"):
        await anext(answers)
