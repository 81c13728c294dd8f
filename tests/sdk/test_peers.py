"""A domain with its real peers: push subscriptions and events through the bus, and
contributions to the shared memory."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from google.protobuf import struct_pb2

from grace.domain.v1 import domain_pb2, domain_pb2_grpc
from grace.eventbus.v1 import eventbus_pb2, eventbus_pb2_grpc
from grace.memory.v1 import memory_pb2, memory_pb2_grpc
from services.common.channels import channel
from services.sdk import Context, Domain, Event, PermissionDenied, Unavailable
from services.sdk.events import subscription_id
from tests.sdk.conftest import domain_config
from tests.sdk.platform import Platform, running_platform
from tests.support import eventually


def peers_config(tmp_path: Path, domain_id: str, platform: Platform) -> Any:
    return dataclasses.replace(
        domain_config(tmp_path / domain_id, domain_id),
        registry_addr=platform.registry,
        eventbus_addr=platform.eventbus,
        memory_addr=platform.memory,
    )


def predictor() -> Domain:
    domain = Domain("predictor", capabilities=["prediction"])

    @domain.action("predict")
    async def predict(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
        event_id = await ctx.publish("ml.prediction", {"prediction": "positive", "n": 1})
        return {"event_id": event_id}

    @domain.action("learn")
    async def learn(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
        knowledge = await ctx.memory.contribute(
            "optimization", {"issue": "port_timeout", "solution": "restart"}, tags=["ops"]
        )
        found = await ctx.memory.query("port timeout")
        return {"id": knowledge.id, "found": [k.id for k in found]}

    return domain


async def test_an_event_published_by_one_domain_is_pushed_to_a_subscriber(
    tmp_path: Path,
) -> None:
    seen: list[Event] = []
    watcher = Domain("watcher")

    @watcher.on_event("ml.*")
    async def on_ml(ctx: Context, event: Event) -> None:
        seen.append(event)

    async with running_platform(tmp_path) as platform:
        watcher_config = peers_config(tmp_path, "watcher", platform)
        async with watcher.serve(watcher_config) as watching:
            await eventually(lambda: watching.service.subscriptions.created.is_set(), every_s=0.05)
            await eventually(lambda: watching.service.registrar.registered.is_set(), every_s=0.05)
            bus = eventbus_pb2_grpc.EventBusServiceStub(platform.eventbus_channel)
            listed = await bus.ListSubscriptions(eventbus_pb2.ListSubscriptionsRequest())
            subs = {
                (s.subscription_id, s.domain_id, tuple(s.patterns)) for s in listed.subscriptions
            }
            assert (subscription_id("watcher", "ml.*"), "watcher", ("ml.*",)) in subs

            async with predictor().serve(peers_config(tmp_path, "predictor", platform)) as pred:
                async with channel(pred.address) as chan:
                    response = await domain_pb2_grpc.DomainServiceStub(chan).Execute(
                        domain_pb2.ExecuteRequest(action="predict", idempotency_key="x/step_1")
                    )
                await eventually(lambda: len(seen) == 1, every_s=0.05)
    event = seen[0]
    assert event.id == response.output["event_id"]
    assert (event.event_type, event.source_domain) == ("ml.prediction", "predictor")
    assert event.data == {"prediction": "positive", "n": 1.0}
    assert event.sequence > 0


async def test_a_restarted_domain_keeps_its_subscription(tmp_path: Path) -> None:
    watcher = Domain("watcher")

    @watcher.on_event("ml.*")
    async def on_ml(ctx: Context, event: Event) -> None:
        return None

    async with running_platform(tmp_path) as platform:
        config = peers_config(tmp_path, "watcher", platform)
        for _ in range(2):
            async with watcher.serve(config) as watching:
                await eventually(
                    lambda: watching.service.subscriptions.created.is_set(), every_s=0.05
                )
        bus = eventbus_pb2_grpc.EventBusServiceStub(platform.eventbus_channel)
        listed = await bus.ListSubscriptions(eventbus_pb2.ListSubscriptionsRequest())
    assert [s.domain_id for s in listed.subscriptions] == ["watcher"]


async def test_ctx_memory_contributes_as_the_domain_and_queries(tmp_path: Path) -> None:
    async with running_platform(tmp_path) as platform:
        config = peers_config(tmp_path, "predictor", platform)
        async with predictor().serve(config) as pred, channel(pred.address) as chan:
            response = await domain_pb2_grpc.DomainServiceStub(chan).Execute(
                domain_pb2.ExecuteRequest(action="learn", idempotency_key="k")
            )
        memory = memory_pb2_grpc.SharedMemoryServiceStub(platform.memory_channel)
        stored = await memory.GetContribution(
            memory_pb2.GetContributionRequest(contribution_id=response.output["id"])
        )
    assert stored.contribution.domain_id == "predictor"
    assert stored.contribution.contribution_type == "optimization"
    assert list(stored.contribution.tags) == ["ops"]
    assert list(response.output["found"]) == [response.output["id"]]


async def test_ctx_memory_retracts_its_own_knowledge_and_not_another_domains(
    tmp_path: Path,
) -> None:
    outcomes: list[Any] = []

    def with_forget(domain: Domain) -> Domain:
        @domain.action("forget")
        async def forget(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
            try:
                knowledge = await ctx.memory.retract(data["id"], "no longer true")
            except PermissionDenied as exc:
                outcomes.append(exc)
                return {"retracted": False}
            outcomes.append(knowledge)
            found = await ctx.memory.query("port timeout")
            return {"retracted": knowledge.retracted, "found": [k.id for k in found]}

        return domain

    async with running_platform(tmp_path) as platform:
        pred_config = peers_config(tmp_path, "predictor", platform)
        other_config = peers_config(tmp_path, "other", platform)
        async with (
            with_forget(predictor()).serve(pred_config) as pred,
            with_forget(Domain("other")).serve(other_config) as other,
            channel(pred.address) as pred_chan,
            channel(other.address) as other_chan,
        ):
            pred_stub = domain_pb2_grpc.DomainServiceStub(pred_chan)
            learned = await pred_stub.Execute(
                domain_pb2.ExecuteRequest(action="learn", idempotency_key="k")
            )
            knowledge_id = learned.output["id"]
            data = struct_pb2.Struct()
            data.update({"id": knowledge_id})
            refused = await domain_pb2_grpc.DomainServiceStub(other_chan).Execute(
                domain_pb2.ExecuteRequest(action="forget", input=data)
            )
            forgotten = await pred_stub.Execute(
                domain_pb2.ExecuteRequest(action="forget", input=data, idempotency_key="f1")
            )
            again = await pred_stub.Execute(
                domain_pb2.ExecuteRequest(action="forget", input=data, idempotency_key="f2")
            )
        memory = memory_pb2_grpc.SharedMemoryServiceStub(platform.memory_channel)
        stored = await memory.GetContribution(
            memory_pb2.GetContributionRequest(contribution_id=knowledge_id)
        )
    assert refused.output["retracted"] is False
    assert isinstance(outcomes[0], PermissionDenied)
    assert forgotten.output["retracted"] is True
    assert list(forgotten.output["found"]) == []
    assert again.output["retracted"] is True
    assert outcomes[1].id == knowledge_id
    assert stored.contribution.retracted
    assert stored.contribution.retraction_reason == "no longer true"


async def test_ctx_memory_without_a_memory_is_unavailable(tmp_path: Path) -> None:
    errors: list[Exception] = []
    domain = Domain("lonely")

    @domain.action("try_memory")
    async def try_memory(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
        try:
            await ctx.memory.query("anything")
        except Unavailable as exc:
            errors.append(exc)
        return {"available": ctx.memory.available}

    config = domain_config(tmp_path, "lonely")
    async with domain.serve(config) as running, channel(running.address) as chan:
        response = await domain_pb2_grpc.DomainServiceStub(chan).Execute(
            domain_pb2.ExecuteRequest(action="try_memory", input=struct_pb2.Struct())
        )
    assert response.output["available"] is False
    assert "not configured" in str(errors[0])
