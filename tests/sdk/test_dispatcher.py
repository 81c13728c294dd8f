"""The domain core without gRPC: idempotency, errors, metrics and event outcomes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from services.common.config import sqlite_url
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.common.storage import Database
from services.sdk import Context, Domain, Event, Outcome
from services.sdk.dispatcher import Call, Dispatcher
from services.sdk.memory import MemoryClient
from services.sdk.store import DomainTables, KeyValueStore, ResultStore
from tests.sdk.conftest import Probe, counting_domain

TABLES = DomainTables.of("test_domain")


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(sqlite_url(tmp_path / "domain.db"))
    await db.create_tables(TABLES.metadata)
    yield db
    await db.close()


@pytest.fixture
def probe() -> Probe:
    return Probe()


def make_dispatcher(probe: Probe, db: Database, max_concurrency: int = 4) -> Dispatcher:
    return Dispatcher(
        counting_domain(probe),
        ResultStore(db, TABLES),
        KeyValueStore(db, TABLES),
        MemoryClient("test_domain", None),
        None,
        max_concurrency,
    )


@pytest.fixture
def dispatcher(probe: Probe, database: Database) -> Dispatcher:
    return make_dispatcher(probe, database)


def event(answer: str = "", event_type: str = "ml.prediction") -> Event:
    return Event(id="e1", event_type=event_type, source_domain="ai_domain", data={"answer": answer})


async def test_a_repeated_key_returns_the_first_result_without_running_again(
    dispatcher: Dispatcher, probe: Probe
) -> None:
    call = Call("echo", {"text": "hi"}, idempotency_key="exec-1/step_1")
    first = await dispatcher.execute(call)
    second = await dispatcher.execute(call)
    assert first.output == {"text": "hi", "run": 1.0}
    assert not first.replayed
    assert second.output == first.output
    assert second.replayed
    assert probe.runs["echo"] == 1


async def test_calls_without_a_key_always_run(dispatcher: Dispatcher, probe: Probe) -> None:
    await dispatcher.execute(Call("echo", {"text": "a"}))
    await dispatcher.execute(Call("echo", {"text": "a"}))
    assert probe.runs["echo"] == 2


async def test_a_stored_result_survives_a_new_dispatcher_on_the_same_database(
    probe: Probe, database: Database
) -> None:
    call = Call("echo", {"text": "hi"}, idempotency_key="k")
    await make_dispatcher(probe, database).execute(call)
    again = await make_dispatcher(probe, database).execute(call)
    assert again.replayed
    assert probe.runs["echo"] == 1


async def test_concurrent_calls_with_one_key_wait_for_the_first(
    dispatcher: Dispatcher, probe: Probe
) -> None:
    probe.release.clear()
    call = Call("slow", {}, idempotency_key="same")
    calls = [asyncio.create_task(dispatcher.execute(call)) for _ in range(5)]
    for _ in range(200):
        if probe.runs.get("slow"):
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in calls)
    probe.release.set()
    results = await asyncio.gather(*calls)
    assert probe.runs["slow"] == 1
    assert {r.output["run"] for r in results} == {1.0}
    assert sorted(r.replayed for r in results) == [False, True, True, True, True]


async def test_a_failed_call_stores_nothing_so_a_retry_with_the_key_runs_again(
    dispatcher: Dispatcher, probe: Probe
) -> None:
    probe.fail_next = 1
    call = Call("flaky", {}, idempotency_key="retry-me", attempt=1)
    with pytest.raises(RuntimeError):
        await dispatcher.execute(call)
    result = await dispatcher.execute(Call("flaky", {}, idempotency_key="retry-me", attempt=2))
    assert result.output == {"run": 2.0}
    assert not result.replayed


async def test_a_key_reused_for_another_action_is_refused(dispatcher: Dispatcher) -> None:
    await dispatcher.execute(Call("echo", {"text": "x"}, idempotency_key="k"))
    with pytest.raises(AlreadyExists, match="used for action 'echo'"):
        await dispatcher.execute(Call("flaky", {}, idempotency_key="k"))


async def test_unknown_actions_and_bad_input_raise_typed_errors(dispatcher: Dispatcher) -> None:
    with pytest.raises(NotFound) as unknown:
        await dispatcher.execute(Call("nope", {}))
    assert unknown.value.metadata == {"kind": "action", "id": "nope"}
    with pytest.raises(InvalidArgument) as bad:
        await dispatcher.execute(Call("echo", {"text": 3}))
    assert (bad.value.field, bad.value.rule) == ("input.text", "must be a string")
    with pytest.raises(InvalidArgument, match="idempotency_key"):
        await dispatcher.execute(Call("echo", {"text": "x"}, idempotency_key="k" * 257))


async def test_compensation_gets_input_and_output_and_is_idempotent_too(
    dispatcher: Dispatcher, probe: Probe
) -> None:
    call = Call("echo", {"text": "x"}, idempotency_key="e/s/compensate")
    first = await dispatcher.compensate(call, {"run": 7})
    again = await dispatcher.compensate(call, {"run": 7})
    assert first.output == {"undone_run": 7.0, "undo": 1.0}
    assert again.replayed
    assert probe.runs["unecho"] == 1


async def test_compensating_an_action_without_compensation_reports_nothing_to_undo(
    dispatcher: Dispatcher,
) -> None:
    result = await dispatcher.compensate(Call("slow", {}), {})
    assert result.output["compensated"] is False
    with pytest.raises(NotFound):
        await dispatcher.compensate(Call("missing", {}), {})


async def test_metrics_measure_latency_and_success_but_not_the_callers_mistakes(
    dispatcher: Dispatcher, probe: Probe
) -> None:
    await dispatcher.execute(Call("flaky", {}))
    probe.fail_next = 1
    with pytest.raises(RuntimeError):
        await dispatcher.execute(Call("flaky", {}))
    with pytest.raises(InvalidArgument):
        await dispatcher.execute(Call("flaky", {"bad": True}))
    with pytest.raises(NotFound):
        await dispatcher.execute(Call("missing", {}))
    snapshot = dispatcher.metrics.snapshot()
    assert snapshot.calls == 2
    assert snapshot.success_rate == 0.5
    assert snapshot.latency_ms > 0
    assert snapshot.in_flight == 0
    assert snapshot.load == 0


async def test_load_is_calls_in_flight_over_max_concurrency(
    dispatcher: Dispatcher, probe: Probe
) -> None:
    probe.release.clear()
    calls = [asyncio.create_task(dispatcher.execute(Call("slow", {}))) for _ in range(6)]
    for _ in range(200):
        if dispatcher.metrics.in_flight == 6:
            break
        await asyncio.sleep(0.01)
    assert dispatcher.metrics.snapshot().load == 1.0
    assert probe.runs["slow"] == 4  # max_concurrency: the other two wait for a slot
    probe.release.set()
    await asyncio.gather(*calls)
    assert probe.runs["slow"] == 6


@pytest.mark.parametrize(
    ("answer", "outcome", "reason", "after"),
    [
        ("", Outcome.ACK, "", None),
        ("retry", Outcome.RETRY, "not now", 2.5),
        ("drop", Outcome.DROP, "never", None),
        ("crash", Outcome.RETRY, "handler on_ml failed: RuntimeError: boom", None),
    ],
)
async def test_event_handlers_answer_ack_retry_or_drop(
    dispatcher: Dispatcher,
    probe: Probe,
    answer: str,
    outcome: Outcome,
    reason: str,
    after: float | None,
) -> None:
    delivery = await dispatcher.deliver(event(answer), attempt=3)
    assert (delivery.outcome, delivery.reason, delivery.retry_after_s) == (outcome, reason, after)
    assert probe.events[-1].data == {"answer": answer}


async def test_an_event_no_handler_wants_is_dropped(dispatcher: Dispatcher, probe: Probe) -> None:
    delivery = await dispatcher.deliver(event(event_type="auth.login"))
    assert delivery.outcome is Outcome.DROP
    assert "no handler" in delivery.reason
    assert probe.events == []


async def test_a_handler_may_return_an_outcome(probe: Probe, database: Database) -> None:
    dispatcher = make_dispatcher(probe, database)

    async def pick(ctx: object, ev: Event) -> Outcome:
        return Outcome.DROP if ev.data.get("answer") == "no" else Outcome.ACK

    dispatcher.domain.on_event("pick.*")(pick)
    assert (await dispatcher.deliver(event("no", "pick.one"))).outcome is Outcome.DROP
    assert (await dispatcher.deliver(event("yes", "pick.one"))).outcome is Outcome.ACK


async def _started(probe: Probe, action: str) -> None:
    for _ in range(500):
        if probe.runs.get(action):
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"{action} never started")


async def test_a_caller_that_goes_away_mid_call_does_not_cancel_the_run(
    dispatcher: Dispatcher, probe: Probe
) -> None:
    probe.release.clear()
    call = Call("slow", {}, idempotency_key="exec-9/step_1")
    caller = asyncio.create_task(dispatcher.execute(call))
    await _started(probe, "slow")
    caller.cancel()  # What gRPC does to the handler when the orchestrator dies.
    with pytest.raises(asyncio.CancelledError):
        await caller
    retry = asyncio.create_task(dispatcher.execute(call))
    await asyncio.sleep(0.05)
    assert not retry.done()  # The retry waits for the run in progress...
    probe.release.set()
    result = await retry
    assert result.output == {"run": 1.0}  # ...and gets its result: one run, not two.
    assert result.replayed
    assert probe.runs["slow"] == 1


async def test_a_run_interrupted_by_a_stop_is_not_run_again_after_a_restart(
    probe: Probe, database: Database
) -> None:
    probe.release.clear()
    first = make_dispatcher(probe, database)
    call = Call("slow", {}, idempotency_key="exec-9/step_2")
    caller = asyncio.create_task(first.execute(call))
    await _started(probe, "slow")
    await first.drain(timeout_s=0.05)  # The domain stops before the run ends.
    with pytest.raises(asyncio.CancelledError):
        await caller
    probe.release.set()
    restarted = make_dispatcher(probe, database)
    with pytest.raises(FailedPrecondition) as raised:
        await restarted.execute(call)
    assert raised.value.reason == "IDEMPOTENCY_KEY_INTERRUPTED"
    assert "exec-9/step_2" in raised.value.message
    assert probe.runs["slow"] == 1
    # Other keys are not affected.
    assert (await restarted.execute(Call("slow", {}, idempotency_key="other"))).output == {
        "run": 2.0
    }


async def test_a_stop_lets_a_run_that_ends_in_time_store_its_result(
    probe: Probe, database: Database
) -> None:
    probe.release.clear()
    first = make_dispatcher(probe, database)
    call = Call("slow", {}, idempotency_key="exec-9/step_3")
    caller = asyncio.create_task(first.execute(call))
    await _started(probe, "slow")
    asyncio.get_running_loop().call_later(0.05, probe.release.set)
    await first.drain(timeout_s=10)
    assert (await caller).output == {"run": 1.0}
    replay = await make_dispatcher(probe, database).execute(call)
    assert replay.replayed
    assert probe.runs["slow"] == 1


async def test_an_action_declared_safe_to_rerun_runs_again_after_an_interruption(
    database: Database,
) -> None:
    release, running = asyncio.Event(), asyncio.Event()
    runs: list[str] = []
    domain = Domain("test_domain")

    @domain.action("keyed", rerun_if_interrupted=True)
    async def keyed(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
        runs.append(ctx.idempotency_key)
        running.set()
        await release.wait()
        return {"runs": len(runs)}

    def dispatcher() -> Dispatcher:
        return Dispatcher(
            domain,
            ResultStore(database, TABLES),
            KeyValueStore(database, TABLES),
            MemoryClient("test_domain", None),
            None,
            4,
        )

    first = dispatcher()
    call = Call("keyed", {}, idempotency_key="exec-8/step_1")
    caller = asyncio.create_task(first.execute(call))
    await asyncio.wait_for(running.wait(), timeout=10)
    await first.drain(timeout_s=0.05)
    with pytest.raises(asyncio.CancelledError):
        await caller
    release.set()
    restarted = dispatcher()
    result = await restarted.execute(call)
    assert result.output == {"runs": 2.0}
    assert not result.replayed
    assert (await restarted.execute(call)).replayed  # And stored, as any first result.


async def test_an_interrupted_compensation_runs_again(probe: Probe, database: Database) -> None:
    first = make_dispatcher(probe, database)
    call = Call("echo", {"text": "x"}, idempotency_key="exec-7/step_1/compensate")
    results = ResultStore(database, TABLES)
    await results.mark_started("compensate", call.idempotency_key, "echo")  # A killed undo.
    undone = await first.compensate(call, {"run": 1.0})
    assert undone.output == {"undone_run": 1.0, "undo": 1.0}
    assert await results.started("compensate", call.idempotency_key) is None
