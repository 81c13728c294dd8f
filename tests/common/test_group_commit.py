"""The one group committer: batching, answers, failure fan-out, cancellation and drain."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from services.common.errors import Unavailable
from services.common.group_commit import GroupCommitter


class Recorder:
    """A commit function that records its batches and can be held or made to fail."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.fail_with: Exception | None = None

    async def __call__(self, batch: list[int]) -> Sequence[int | BaseException]:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        self.batches.append(batch)
        return [ValueError(f"odd {item}") if item < 0 else item * 10 for item in batch]


async def started(recorder: Recorder, **kwargs: int) -> GroupCommitter[int, int]:
    committer: GroupCommitter[int, int] = GroupCommitter(recorder, name="test-commit", **kwargs)
    committer.start()
    return committer


async def test_concurrent_submissions_share_one_commit_and_each_gets_its_own_result() -> None:
    recorder = Recorder()
    committer = await started(recorder)
    results = await asyncio.gather(*(committer.submit(i) for i in range(50)))
    assert results == [i * 10 for i in range(50)]
    assert recorder.batches == [list(range(50))]
    await committer.close()


async def test_the_next_batch_forms_while_a_commit_is_in_flight() -> None:
    recorder = Recorder()
    recorder.gate = asyncio.Event()
    committer = await started(recorder)
    first = asyncio.ensure_future(committer.submit(1))
    await recorder.entered.wait()
    later = [asyncio.ensure_future(committer.submit(i)) for i in (2, 3, 4)]
    await asyncio.sleep(0)
    assert committer.queued_weight == 3
    recorder.gate.set()
    assert await first == 10
    assert [await f for f in later] == [20, 30, 40]
    assert recorder.batches == [[1], [2, 3, 4]]
    await committer.close()


async def test_a_batch_stops_at_its_weight_bound_but_takes_one_heavy_item_alone() -> None:
    recorder = Recorder()
    recorder.gate = asyncio.Event()
    committer: GroupCommitter[int, int] = GroupCommitter(
        recorder, name="weighted", max_batch_weight=10, weight=lambda item: item
    )
    committer.start()
    futures = [committer.submit_nowait(item) for item in (4, 5, 3, 25, 1)]
    recorder.gate.set()
    await asyncio.gather(*futures)
    assert recorder.batches == [[4, 5], [3], [25], [1]]
    await committer.close()


async def test_an_item_level_error_reaches_only_its_caller() -> None:
    committer = await started(Recorder())
    good, bad = committer.submit_nowait(7), committer.submit_nowait(-1)
    assert await good == 70
    with pytest.raises(ValueError, match="odd -1"):
        await bad
    await committer.close()


async def test_a_failed_commit_fails_every_caller_of_the_batch_and_the_next_batch_still_runs() -> (
    None
):
    recorder = Recorder()
    recorder.fail_with = OSError("disk full")
    committer = await started(recorder)
    futures = [committer.submit_nowait(i) for i in range(3)]
    for future in futures:
        with pytest.raises(OSError, match="disk full"):
            await future
    recorder.fail_with = None
    assert await committer.submit(5) == 50
    await committer.close()


async def test_a_result_count_that_does_not_match_the_batch_fails_it_instead_of_misanswering() -> (
    None
):
    async def short(batch: list[int]) -> Sequence[int]:
        return batch[:-1]

    committer: GroupCommitter[int, int] = GroupCommitter(short, name="short")
    committer.start()
    futures = [committer.submit_nowait(i) for i in range(2)]
    for future in futures:
        with pytest.raises(RuntimeError, match="1 results for 2 items"):
            await future
    await committer.close()


async def test_a_cancelled_caller_does_not_take_its_item_out_of_the_write() -> None:
    recorder = Recorder()
    recorder.gate = asyncio.Event()
    committer = await started(recorder)
    blocker = asyncio.ensure_future(committer.submit(1))
    await recorder.entered.wait()
    impatient = asyncio.ensure_future(committer.submit(2))
    await asyncio.sleep(0)
    impatient.cancel()
    recorder.gate.set()
    assert await blocker == 10
    with pytest.raises(asyncio.CancelledError):
        await impatient
    await committer.close()
    assert recorder.batches == [[1], [2]]


async def test_close_commits_what_is_queued_and_then_refuses_new_items() -> None:
    recorder = Recorder()
    recorder.gate = asyncio.Event()
    committer = await started(recorder)
    futures = [committer.submit_nowait(i) for i in range(4)]
    closing = asyncio.ensure_future(committer.close(drain_timeout_s=None))
    await asyncio.sleep(0)
    with pytest.raises(Unavailable, match="test-commit is shutting down"):
        committer.submit_nowait(99)
    recorder.gate.set()
    await closing
    assert [await f for f in futures] == [0, 10, 20, 30]
    assert not committer.running


async def test_a_drain_that_runs_out_of_time_fails_the_waiting_callers_instead_of_hanging() -> None:
    recorder = Recorder()
    recorder.gate = asyncio.Event()  # never set: the commit hangs
    committer = await started(recorder)
    in_flight = committer.submit_nowait(1)
    await recorder.entered.wait()
    queued = committer.submit_nowait(2)
    await committer.close(drain_timeout_s=0.05)
    for future in (in_flight, queued):
        with pytest.raises(Unavailable):
            await future


async def test_submitting_before_start_is_refused_with_the_services_own_error() -> None:
    committer: GroupCommitter[int, int] = GroupCommitter(
        Recorder(), name="x", closed_error=lambda: Unavailable("the log is closed")
    )
    with pytest.raises(Unavailable, match="the log is closed"):
        await committer.submit(1)


async def test_a_failed_commit_reaches_callers_as_the_services_chosen_error() -> None:
    recorder = Recorder()
    recorder.fail_with = OSError("disk full")
    committer: GroupCommitter[int, int] = GroupCommitter(
        recorder, name="log", failed_error=lambda exc: Unavailable(f"not committed: {exc}")
    )
    committer.start()
    with pytest.raises(Unavailable, match="not committed: disk full"):
        await committer.submit(1)
    await committer.close()
