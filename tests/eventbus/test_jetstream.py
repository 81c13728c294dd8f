"""The JetStream log backend: subjects, several bus instances on one stream, restarts of
the bus and of the NATS server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from grace.domain.v1 import domain_pb2
from grace.eventbus.v1 import event_pb2
from services.common.config import ConfigError
from services.common.errors import NotFound, Unavailable
from services.eventbus import jetstream_state
from services.eventbus.bus import EventBus
from services.eventbus.config import EventBusConfig
from services.eventbus.jetstream import (
    JetStreamOptions,
    stream_sequence,
    subject_filter,
    subject_for,
)
from services.eventbus.jetstream_state import CONSUMER, durable_name
from services.eventbus.model import Start, StartSpec, SubscriptionState
from tests.eventbus.conftest import (
    FAST,
    delete_stream,
    jetstream_bus,
    start_nats,
    wait_for_nats,
)
from tests.support import eventually


def ev(event_type: str = "ml.prediction", **fields: object) -> event_pb2.Event:
    return event_pb2.Event(event_type=event_type, source_domain="ai_domain", **fields)  # type: ignore[arg-type]


def test_event_types_map_to_subjects_with_empty_parts_made_valid() -> None:
    assert subject_for("grace.events", "ml.prediction") == "grace.events.ml.prediction"
    assert subject_for("p", "a..b.") == "p.a._.b._"


def test_patterns_become_the_narrowest_subject_filter_nats_can_express() -> None:
    assert subject_filter("p", ()) == "p.>"
    assert subject_filter("p", ("*",)) == "p.>"
    assert subject_filter("p", ("ml.prediction",)) == "p.ml.prediction"
    assert subject_filter("p", ("ml.*",)) == "p.ml.>"
    assert subject_filter("p", ("ml.model.tra*",)) == "p.ml.model.>"
    # A '*' inside the first token, or a leading one, leaves every subject to the bus.
    assert subject_filter("p", ("*.failed",)) == "p.>"
    assert subject_filter("p", ("ml*",)) == "p.>"
    # Several patterns share their common whole tokens.
    assert subject_filter("p", ("ml.a", "ml.b.*")) == "p.ml.>"
    assert subject_filter("p", ("ml.a", "ops.b")) == "p.>"


def test_the_stream_sequence_is_read_from_both_reply_subject_formats() -> None:
    assert stream_sequence("$JS.ACK.EVENTS.tail.1.42.7.1700000000000000000.3") == 42
    with_domain = "$JS.ACK.hub.ACCHASH.EVENTS.tail.2.43.8.1700000000000000000.0.token"
    assert stream_sequence(with_domain) == 43


def test_consumer_names_escape_what_nats_forbids_and_stay_distinct() -> None:
    names = ["memory.indexer", "memory_2eindexer", "a:b", "a_3ab", "plain-name"]
    escaped = [durable_name(CONSUMER, name) for name in names]
    assert len(set(escaped)) == len(names)
    assert all("." not in e and ":" not in e for e in escaped)
    assert durable_name(CONSUMER, "plain-name") == "c-plain-name"


def test_the_backend_is_chosen_by_url_and_bad_values_name_the_variable() -> None:
    assert EventBusConfig.from_env({}).jetstream is None
    config = EventBusConfig.from_env(
        {
            "GRACE_EVENTBUS_BACKEND": "nats://a:4222, nats://b:4222",
            "GRACE_EVENTBUS_NATS_STREAM": "EVENTS",
            "GRACE_EVENTBUS_NATS_DUPLICATE_WINDOW_S": "30",
        }
    ).jetstream
    assert config is not None
    assert config.servers == ("nats://a:4222", "nats://b:4222")
    assert (config.stream, config.duplicate_window_s, config.tls) == ("EVENTS", 30.0, False)
    tls = EventBusConfig.from_env({"GRACE_EVENTBUS_BACKEND": "tls://a:4222"}).jetstream
    assert tls is not None
    assert tls.tls
    with pytest.raises(ConfigError, match="GRACE_EVENTBUS_BACKEND"):
        EventBusConfig.from_env({"GRACE_EVENTBUS_BACKEND": "kafka://a:9092"})
    with pytest.raises(ConfigError, match="GRACE_EVENTBUS_NATS_SUBJECT_PREFIX"):
        EventBusConfig.from_env(
            {"GRACE_EVENTBUS_BACKEND": "nats://a:4222", "GRACE_EVENTBUS_NATS_SUBJECT_PREFIX": "a.>"}
        )


@contextlib.asynccontextmanager
async def instance(options: JetStreamOptions, data_dir: Path) -> AsyncIterator[EventBus]:
    """One bus instance on the shared stream (it keeps nothing of its own: `data_dir`
    only shows that instances share no files)."""
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True)
    bus = jetstream_bus(options, replace(FAST))
    await bus.open()
    try:
        yield bus
    finally:
        await bus.close()


@pytest.fixture
async def shared(jetstream_options: JetStreamOptions) -> AsyncIterator[JetStreamOptions]:
    yield jetstream_options
    await delete_stream(jetstream_options)


async def test_a_repeated_event_id_is_suppressed_across_instances(
    shared: JetStreamOptions, tmp_path: Path
) -> None:
    async with instance(shared, tmp_path / "a") as a, instance(shared, tmp_path / "b") as b:
        first = await a.publish(ev(id="evt-1"))
        again = await b.publish(ev(id="evt-1"))
        other = await b.publish(ev(id="evt-2"))
        assert (again.sequence, again.duplicate) == (first.sequence, True)
        assert (other.sequence, other.duplicate) == (first.sequence + 1, False)
        history, _ = await a.history(size=10)
        assert [e.id for e in history] == ["evt-1", "evt-2"]


async def test_a_subscriber_on_one_instance_sees_events_published_on_another(
    shared: JetStreamOptions, tmp_path: Path
) -> None:
    async with instance(shared, tmp_path / "a") as a, instance(shared, tmp_path / "b") as b:
        await a.publish(ev("ml.before"))
        stream = b.subscribe(("ml.*",), StartSpec(Start.DEFAULT))
        got: list[event_pb2.Event] = []

        async def read() -> None:
            async for batch in stream:
                got.extend(batch.events)
                if len(got) >= 3:
                    return

        reading = asyncio.create_task(read())
        await asyncio.sleep(0.2)  # the subscription is live on b before a publishes
        await a.publish_batch([ev("ml.one"), ev("ops.other"), ev("ml.two")])
        await a.publish(ev("ml.three"))
        await asyncio.wait_for(reading, 20)
        await stream.aclose()  # type: ignore[attr-defined]
        assert [e.event_type for e in got] == ["ml.one", "ml.two", "ml.three"]
        assert [e.sequence for e in got] == [2, 4, 5]
        assert b.log.head == 5


async def test_a_restarted_instance_loses_nothing_acknowledged(
    shared: JetStreamOptions, tmp_path: Path
) -> None:
    async with instance(shared, tmp_path / "a") as a:
        acked = [await a.publish(ev(id=f"e{i}")) for i in range(20)]
        first = a.subscribe(("*",), StartSpec(Start.ALL), consumer="keeper")
        assert (await first.__anext__()).events[0].sequence == 1  # type: ignore[attr-defined]
        await first.aclose()  # type: ignore[attr-defined]
        await a.ack("keeper", 12)
    async with instance(shared, tmp_path / "a") as a:
        assert (a.log.first, a.log.head) == (1, 20)
        history, _ = await a.history(size=100)
        assert [(e.id, e.sequence) for e in history] == [(r.event_id, r.sequence) for r in acked]
        resumed = a.subscribe(("*",), StartSpec(), consumer="keeper")
        batch = await resumed.__anext__()  # type: ignore[attr-defined]
        await resumed.aclose()  # type: ignore[attr-defined]
        assert batch.events[0].sequence == 13


async def test_a_durable_consumer_acked_on_one_instance_resumes_on_another(
    shared: JetStreamOptions, tmp_path: Path
) -> None:
    async with instance(shared, tmp_path / "a") as a, instance(shared, tmp_path / "b") as b:
        await a.publish_batch([ev(f"ml.e{i}") for i in range(5)])
        first = a.subscribe(("ml.*",), StartSpec(Start.ALL), consumer="memory.indexer")
        assert len((await first.__anext__()).events) == 5  # type: ignore[attr-defined]
        await first.aclose()  # type: ignore[attr-defined]
        assert await b.ack("memory.indexer", 2) == 2
        assert await a.ack("memory.indexer", 1) == 2  # never moves back, on any instance
        resumed = b.subscribe(("ml.*",), StartSpec(), consumer="memory.indexer")
        batch = await resumed.__anext__()  # type: ignore[attr-defined]
        await resumed.aclose()  # type: ignore[attr-defined]
        assert [e.sequence for e in batch.events] == [3, 4, 5]
        stats = await a.stats()
        assert [(c.name, c.acked_sequence) for c in stats.consumers] == [("memory.indexer", 2)]
        with pytest.raises(NotFound):
            await b.ack("nobody", 1)


async def test_a_durable_consumer_moved_far_ahead_is_recreated_at_its_new_position(
    shared: JetStreamOptions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jetstream_state, "_ACK_PULL_LIMIT", 2)  # "far" is 3 events here
    async with instance(shared, tmp_path / "a") as a:
        await a.publish_batch([ev(f"ml.e{i}") for i in range(6)])
        first = a.subscribe(("ml.*",), StartSpec(Start.ALL), consumer="far")
        await first.__anext__()  # type: ignore[attr-defined]
        await first.aclose()  # type: ignore[attr-defined]
        assert await a.ack("far", 1) == 1  # pulled
        assert await a.ack("far", 5) == 5  # recreated at 6
        assert await a.ack("far", 2) == 5
        resumed = a.subscribe(("ml.*",), StartSpec(), consumer="far")
        batch = await resumed.__anext__()  # type: ignore[attr-defined]
        await resumed.aclose()  # type: ignore[attr-defined]
        assert [e.sequence for e in batch.events] == [6]


class Recorder:
    """A stand-in for the domain's DeliverEvent: records calls, drops `ml.bad`."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []  # (instance, sequence, attempt)

    def on(self, name: str, bus: EventBus) -> None:
        async def attempt(
            sub: SubscriptionState, event: event_pb2.Event, number: int
        ) -> tuple[int, float, str]:
            self.calls.append((name, event.sequence, number))
            if event.event_type == "ml.bad":
                return domain_pb2.DELIVERY_OUTCOME_DROP, 0.0, "bad"
            return domain_pb2.DELIVERY_OUTCOME_ACK, 0.0, ""

        bus.push._attempt = attempt  # type: ignore[method-assign]

    def sequences(self) -> list[int]:
        return [sequence for _, sequence, _ in self.calls]


async def test_instances_share_a_push_subscription_and_deliver_each_event_once_in_order(
    shared: JetStreamOptions, tmp_path: Path
) -> None:
    domain = Recorder()
    async with instance(shared, tmp_path / "a") as a, instance(shared, tmp_path / "b") as b:
        domain.on("a", a)
        domain.on("b", b)
        await a.create_subscription("memory_domain", ("ml.*",), subscription_id="mem")
        await eventually(lambda: "mem" in b.push.workers)  # found by b's discovery
        for i in range(10):
            await (a if i % 2 else b).publish_batch([ev(f"ml.e{i}"), ev("ops.skipped")])
        await b.publish(ev("ml.bad"))
        await eventually(lambda: len(domain.calls) == 11)
        assert domain.sequences() == [*range(1, 21, 2), 21]  # once each, in order

        async def dead_letter() -> bool:
            dead, _ = await a.list_dead_letters()
            return [(d.subscription_id, d.sequence, d.reason) for d in dead] == [("mem", 21, "bad")]

        await eventually(dead_letter)
        await eventually(lambda: _delivered(a, 10))
    async with instance(shared, tmp_path / "b") as b:  # every instance gone and back
        domain.on("b", b)
        await b.publish(ev("ml.after"))
        await eventually(lambda: len(domain.calls) == 12)
        assert domain.calls[-1][1:] == (22, 1)
        await eventually(lambda: _delivered(b, 11))
        deleted = await b.delete_subscription("mem")
        assert deleted.dead_letter_count == 1


async def _delivered(bus: EventBus, count: int) -> bool:
    await bus.push.flush()  # the counts other instances added come with the flush
    return bus.get_subscription("mem").delivered_count == count


@pytest.mark.slow
async def test_acknowledged_events_survive_a_nats_server_restart(
    private_nats: tuple[int, Path], tmp_path: Path
) -> None:
    port, store = private_nats
    server = start_nats(port, store)
    try:
        await wait_for_nats(port)
        options = JetStreamOptions(servers=(f"nats://127.0.0.1:{port}",), timeout_s=2)
        async with instance(options, tmp_path / "bus") as bus:
            acked = {(await bus.publish(ev(id=f"before-{i}"))).sequence for i in range(50)}
            server.kill()
            server.wait()
            with pytest.raises(Unavailable):
                await bus.publish(ev(id="while-down"))
            server = start_nats(port, store)
            await wait_for_nats(port)
            # The client reconnects on its own; publishing resumes on the same stream.
            after = None
            for _ in range(100):
                try:
                    after = await bus.publish(ev(id="after"))
                    break
                except Unavailable:
                    await asyncio.sleep(0.1)
            assert after is not None
            history, _ = await bus.history(size=100)
            stored = {e.sequence for e in history if e.id.startswith("before-")}
            assert stored == acked
            assert after.sequence > max(acked)
            repeat = await bus.publish(ev(id="before-0"))
            assert repeat.duplicate
            assert repeat.sequence == min(acked)
    finally:
        server.kill()
        server.wait()
