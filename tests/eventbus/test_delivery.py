"""Push delivery to a real test domain found through a real registry: retries, dead
letters, redelivery, and subscriptions that survive a bus restart."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from grace.domain.v1 import domain_pb2, domain_pb2_grpc
from grace.eventbus.v1 import event_pb2, eventbus_pb2, eventbus_pb2_grpc
from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.config import ConfigError
from services.common.server import GraceServer, Service
from services.eventbus.config import EventBusConfig
from services.eventbus.jetstream import JetStreamOptions
from services.eventbus.server import EventBusServer
from services.registry.server import RegistryServer
from tests.eventbus.conftest import bus_config
from tests.registry.conftest import registry_config
from tests.support import eventually, server_config, serving

Stub = eventbus_pb2_grpc.EventBusServiceStub


@dataclass
class ScriptedDomain(domain_pb2_grpc.DomainServiceServicer):
    """A domain whose answers to DeliverEvent follow a script, then ACK."""

    script: list[str] = field(default_factory=list)
    calls: list[tuple[int, int]] = field(default_factory=list)  # (sequence, attempt)

    async def DeliverEvent(
        self, request: domain_pb2.DeliverEventRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> domain_pb2.DeliverEventResponse:
        self.calls.append((request.event.sequence, request.attempt))
        step = self.script.pop(0) if self.script else "ack"
        if step == "error":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "busy")
        return domain_pb2.DeliverEventResponse(outcome=_OUTCOMES[step], reason=step)


_OUTCOMES = {
    "ack": domain_pb2.DELIVERY_OUTCOME_ACK,
    "retry": domain_pb2.DELIVERY_OUTCOME_RETRY,
    "drop": domain_pb2.DELIVERY_OUTCOME_DROP,
}


@dataclass
class BatchingDomain(ScriptedDomain):
    """A domain that also takes batches: its DeliverEvents answers follow `batches` (one
    list of outcomes per call), then acknowledge every event."""

    batches: list[list[str]] = field(default_factory=list)
    batch_calls: list[tuple[list[int], int]] = field(default_factory=list)  # (sequences, attempt)

    async def DeliverEvents(
        self, request: domain_pb2.DeliverEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> domain_pb2.DeliverEventsResponse:
        self.batch_calls.append(([e.sequence for e in request.events], request.attempt))
        script = self.batches.pop(0) if self.batches else ["ack"] * len(request.events)
        return domain_pb2.DeliverEventsResponse(
            results=[
                domain_pb2.DeliverEventResponse(outcome=_OUTCOMES[step], reason=step)
                for step in script
            ]
        )


class DomainService(Service):
    def __init__(self, servicer: ScriptedDomain) -> None:
        self.servicer = servicer

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        domain_pb2_grpc.add_DomainServiceServicer_to_server(self.servicer, server)
        return ["grace.domain.v1.DomainService"]


@dataclass
class World:
    registry: str
    domain: ScriptedDomain
    tmp: Path
    jetstream: JetStreamOptions | None


@pytest.fixture
async def world(tmp_path: Path, log_backend: JetStreamOptions | None) -> AsyncIterator[World]:
    """A registry and a scripted `memory_domain` registered in it, on each log backend."""
    async with _world(tmp_path, ScriptedDomain(), log_backend) as world:
        yield world


@pytest.fixture
async def batching(tmp_path: Path) -> AsyncIterator[World]:
    """The same with a domain that takes batches, on the bus's own log (push delivery on
    JetStream holds one event at a time)."""
    async with _world(tmp_path, BatchingDomain(), None) as world:
        yield world


@asynccontextmanager
async def _world(
    tmp_path: Path, domain: ScriptedDomain, log_backend: JetStreamOptions | None
) -> AsyncIterator[World]:
    registry = RegistryServer(registry_config(tmp_path / "registry"))
    async with (
        serving(registry.config.server, registry) as (registry_server, registry_chan),
        GraceServer(server_config("domain", tmp_path / "domain"), DomainService(domain)) as d,
    ):
        await registry_pb2_grpc.RegistryServiceStub(registry_chan).RegisterDomain(
            registry_pb2.RegisterDomainRequest(
                domain_id="memory_domain", host="127.0.0.1", port=d.port, capabilities=["memory"]
            )
        )
        yield World(registry_server.address, domain, tmp_path, log_backend)


def bus_in(world: World, **overrides: object) -> EventBusServer:
    return EventBusServer(
        bus_config(world.tmp / "bus", world.registry, jetstream=world.jetstream, **overrides)
    )


async def subscription(stub: Stub, sub_id: str) -> eventbus_pb2.Subscription:
    stats = await stub.GetStats(eventbus_pb2.GetStatsRequest())
    return next(s for s in stats.subscriptions if s.subscription_id == sub_id)


async def test_a_domain_that_fails_twice_then_acks_gets_the_event_three_times(world: World) -> None:
    world.domain.script = ["retry", "error"]
    bus = bus_in(world)
    async with serving(bus.config.server, bus) as (_, chan):
        stub = Stub(chan)
        seed = json_format.Parse(
            '{"domain_id": "memory_domain", "pattern": "ml.*"}',
            eventbus_pb2.CreateSubscriptionRequest(),
        )
        created = await stub.CreateSubscription(seed)
        sub_id = created.subscription.subscription_id
        assert created.created
        assert list(created.subscription.patterns) == ["ml.*"]
        await stub.Publish(eventbus_pb2.PublishRequest(event_type="ops.ignored", source_domain="a"))
        published = await stub.Publish(
            eventbus_pb2.PublishRequest(event_type="ml.prediction", source_domain="ai_domain")
        )

        async def delivered() -> bool:
            return (await subscription(stub, sub_id)).delivered_count == 1

        await eventually(delivered)
        assert world.domain.calls == [
            (published.sequence, 1),
            (published.sequence, 2),
            (published.sequence, 3),
        ]
        sub = await subscription(stub, sub_id)
        assert (sub.redelivery_count, sub.dead_letter_count) == (2, 0)
        await eventually(lambda: _lag_is_zero(stub, sub_id))
        listed = await stub.ListSubscriptions(
            eventbus_pb2.ListSubscriptionsRequest(domain_id="memory_domain")
        )
        assert [s.subscription_id for s in listed.subscriptions] == [sub_id]


async def _lag_is_zero(stub: Stub, sub_id: str) -> bool:
    return (await subscription(stub, sub_id)).lag == 0


async def test_failures_become_dead_letters_that_can_be_redelivered(world: World) -> None:
    world.domain.script = ["retry", "retry", "retry", "drop"]
    bus = bus_in(world)
    async with serving(bus.config.server, bus) as (_, chan):
        stub = Stub(chan)
        await stub.CreateSubscription(
            eventbus_pb2.CreateSubscriptionRequest(
                domain_id="memory_domain", patterns=["ml.*"], subscription_id="mem", max_attempts=3
            )
        )
        await stub.PublishBatch(
            eventbus_pb2.PublishBatchRequest(
                events=[
                    {"event_type": "ml.one", "source_domain": "ai"},  # type: ignore[list-item]
                    {"event_type": "ml.two", "source_domain": "ai"},  # type: ignore[list-item]
                    {"event_type": "ml.three", "source_domain": "ai"},  # type: ignore[list-item]
                ]
            )
        )

        async def two_dead() -> bool:
            page = await stub.ListDeadLetters(eventbus_pb2.ListDeadLettersRequest())
            return len(page.dead_letters) == 2

        await eventually(two_dead)
        page = await stub.ListDeadLetters(
            eventbus_pb2.ListDeadLettersRequest(subscription_id="mem")
        )
        by_type = {d.event.event_type: d for d in page.dead_letters}
        assert set(by_type) == {"ml.one", "ml.two"}
        assert (by_type["ml.one"].attempts, by_type["ml.one"].reason) == (3, "retry")
        assert (by_type["ml.two"].attempts, by_type["ml.two"].reason) == (1, "drop")
        await eventually(lambda: _delivered(stub, "mem", 1))  # ml.three went through

        redelivered = await stub.RedeliverDeadLetter(
            eventbus_pb2.RedeliverDeadLetterRequest(dead_letter_id=by_type["ml.one"].dead_letter_id)
        )
        assert redelivered.dead_letter.redelivering
        await eventually(lambda: _delivered(stub, "mem", 2))

        async def one_left() -> bool:
            left = await stub.ListDeadLetters(eventbus_pb2.ListDeadLettersRequest())
            return [d.event.event_type for d in left.dead_letters] == ["ml.two"]

        await eventually(one_left)
        stats = await stub.GetStats(eventbus_pb2.GetStatsRequest())
        assert stats.dead_letters == 1
        assert stats.delivered_total == 2


async def _delivered(stub: Stub, sub_id: str, count: int) -> bool:
    return (await subscription(stub, sub_id)).delivered_count == count


async def test_push_subscriptions_survive_a_restart_and_resume_where_they_were(
    world: World,
) -> None:
    bus = bus_in(world)
    async with serving(bus.config.server, bus) as (_, chan):
        stub = Stub(chan)
        request = eventbus_pb2.CreateSubscriptionRequest(
            domain_id="memory_domain", pattern="ml.*", subscription_id="mem"
        )
        await stub.CreateSubscription(request)
        again = await stub.CreateSubscription(request)
        assert not again.created  # idempotent by id
        await stub.Publish(eventbus_pb2.PublishRequest(event_type="ml.before", source_domain="ai"))
        await eventually(lambda: _delivered(stub, "mem", 1))

    bus = bus_in(world)
    async with serving(bus.config.server, bus) as (_, chan):
        stub = Stub(chan)
        after = await stub.Publish(
            eventbus_pb2.PublishRequest(event_type="ml.after", source_domain="ai")
        )
        await eventually(lambda: _delivered(stub, "mem", 2))
        assert [seq for seq, _ in world.domain.calls] == [1, after.sequence]
        deleted = await stub.DeleteSubscription(
            eventbus_pb2.DeleteSubscriptionRequest(subscription_id="mem")
        )
        assert deleted.subscription.delivered_count == 2
        listed = await stub.ListSubscriptions(eventbus_pb2.ListSubscriptionsRequest())
        assert not listed.subscriptions


async def test_an_unregistered_domain_is_retried_then_dead_lettered(world: World) -> None:
    bus = bus_in(world)
    async with serving(bus.config.server, bus) as (_, chan):
        stub = Stub(chan)
        await stub.CreateSubscription(
            eventbus_pb2.CreateSubscriptionRequest(
                domain_id="ghost_domain", pattern="*", subscription_id="ghost", max_attempts=2
            )
        )
        await stub.Publish(eventbus_pb2.PublishRequest(event_type="x", source_domain="ai"))

        async def dead() -> bool:
            page = await stub.ListDeadLetters(eventbus_pb2.ListDeadLettersRequest())
            return len(page.dead_letters) == 1

        await eventually(dead)
        page = await stub.ListDeadLetters(eventbus_pb2.ListDeadLettersRequest())
        assert page.dead_letters[0].reason.startswith("NOT_FOUND")


async def _publish_ml(stub: Stub, count: int) -> list[int]:
    """Publishes `count` events for the `ml.*` subscription in one batch (so they reach
    its worker together); returns their sequences."""
    published = await stub.PublishBatch(
        eventbus_pb2.PublishBatchRequest(
            events=[
                event_pb2.Event(event_type=f"ml.e{n}", source_domain="ai") for n in range(count)
            ]
        )
    )
    return [result.sequence for result in published.results]


async def _subscribe_ml(stub: Stub, max_attempts: int = 0) -> None:
    await stub.CreateSubscription(
        eventbus_pb2.CreateSubscriptionRequest(
            domain_id="memory_domain",
            patterns=["ml.*"],
            subscription_id="mem",
            max_attempts=max_attempts,
        )
    )


async def test_a_domain_without_batches_gets_one_call_per_event_in_order(world: World) -> None:
    bus = bus_in(world)
    async with serving(bus.config.server, bus) as (_, chan):
        stub = Stub(chan)
        await _subscribe_ml(stub)
        sequences = await _publish_ml(stub, 3)
        await eventually(lambda: _delivered(stub, "mem", 3))
        assert world.domain.calls == [(sequence, 1) for sequence in sequences]


@asynccontextmanager
async def _pushing_batches(
    world: World, batches: list[list[str]], events: int, max_attempts: int = 0
) -> AsyncIterator[tuple[Stub, BatchingDomain, list[int]]]:
    """A bus pushing `events` published together to the batching domain, whose first
    DeliverEvents answers are `batches`; yields the bus's stub, the domain and the events'
    sequences."""
    domain = world.domain
    assert isinstance(domain, BatchingDomain)
    domain.batches = batches
    bus = bus_in(world)
    async with serving(bus.config.server, bus) as (_, chan):
        stub = Stub(chan)
        await _subscribe_ml(stub, max_attempts)
        yield stub, domain, await _publish_ml(stub, events)


async def _dead_letters(stub: Stub) -> list[tuple[int, int, str]]:
    page = await stub.ListDeadLetters(eventbus_pb2.ListDeadLettersRequest())
    return [(d.event.sequence, d.attempts, d.reason) for d in page.dead_letters]


async def test_waiting_events_go_in_one_call_and_the_first_not_acknowledged_is_retried(
    batching: World,
) -> None:
    async with _pushing_batches(batching, [["ack", "ack", "retry"]], 5) as (stub, domain, s):
        await eventually(lambda: _delivered(stub, "mem", 5))
        # The third was retried as its second attempt, with the two after it (which the
        # domain did not handle the first time).
        assert domain.batch_calls == [(s, 1), (s[2:], 2)]
        assert domain.calls == []
        sub = await subscription(stub, "mem")
        assert (sub.redelivery_count, sub.dead_letter_count, sub.last_error) == (1, 0, "retry")
        await eventually(lambda: _lag_is_zero(stub, "mem"))


async def test_a_dropped_event_of_a_batch_is_dead_lettered_and_the_rest_delivered(
    batching: World,
) -> None:
    async with _pushing_batches(batching, [["ack", "drop"]], 4) as (stub, domain, s):
        await eventually(lambda: _delivered(stub, "mem", 3))
        assert domain.batch_calls == [(s, 1), (s[2:], 1)]
        assert await _dead_letters(stub) == [(s[1], 1, "drop")]


async def test_a_domain_that_handles_none_of_a_batch_is_retried_then_the_first_dead_lettered(
    batching: World,
) -> None:
    async with _pushing_batches(batching, [[], []], 2, max_attempts=2) as (stub, domain, s):
        await eventually(lambda: _delivered(stub, "mem", 1))
        # Two attempts of the pair, then the first is a dead letter and the last goes on.
        assert domain.batch_calls == [(s, 1), (s, 2), (s[1:], 1)]
        assert domain.calls == []
        assert await _dead_letters(stub) == [(s[0], 2, "the domain handled none of the events")]


async def test_a_restart_in_the_middle_of_a_batch_resumes_after_the_events_acknowledged(
    batching: World,
) -> None:
    domain = batching.domain
    assert isinstance(domain, BatchingDomain)
    domain.batches = [["ack", "ack", "retry"]]
    # A long backoff: the bus stops while the third event waits for its second attempt.
    bus = bus_in(batching, push_initial_backoff_s=60.0, push_max_backoff_s=60.0)
    async with serving(bus.config.server, bus) as (_, chan):
        stub = Stub(chan)
        await _subscribe_ml(stub)
        s = await _publish_ml(stub, 5)
        await eventually(lambda: _delivered(stub, "mem", 2))
    bus = bus_in(batching)
    async with serving(bus.config.server, bus) as (_, chan):
        stub = Stub(chan)
        await eventually(lambda: _delivered(stub, "mem", 5))
    # The two acknowledged before the stop are not delivered again.
    assert domain.batch_calls == [(s, 1), (s[2:], 1)]


def test_push_batches_and_reader_byte_bounds_come_from_the_environment() -> None:
    defaults = EventBusConfig.from_env({}).settings
    assert (defaults.push_batch, defaults.reader_queue_bytes) == (100, 64 * 1024 * 1024)
    tuned = EventBusConfig.from_env(
        {"GRACE_EVENTBUS_PUSH_BATCH": "1", "GRACE_EVENTBUS_READER_QUEUE_BYTES": "2097152"}
    ).settings
    assert (tuned.push_batch, tuned.reader_queue_bytes) == (1, 2 * 1024 * 1024)
    for name, value in (
        ("GRACE_EVENTBUS_PUSH_BATCH", "1001"),
        ("GRACE_EVENTBUS_PUSH_BATCH", "0"),
        ("GRACE_EVENTBUS_READER_QUEUE_BYTES", "1000"),
    ):
        with pytest.raises(ConfigError, match=name):
            EventBusConfig.from_env({name: value})
