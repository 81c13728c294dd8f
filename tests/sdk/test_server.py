"""A domain over real gRPC: every RPC and error, restarts, and the registry."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from grace.domain.v1 import domain_pb2, domain_pb2_grpc
from grace.eventbus.v1 import event_pb2
from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.channels import channel
from services.registry.config import RegistryConfig
from services.registry.registry import RegistrySettings
from services.registry.server import RegistryServer
from services.sdk import Domain, DomainConfig, RunningDomain
from services.sdk.server import SERVICE_NAME
from tests.sdk.conftest import Probe, counting_domain, domain_config
from tests.support import eventually, free_port, server_config, serving

pb = domain_pb2


def struct(**values: object) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


async def expect_error(call: object, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    assert raised.value.code() == code, raised.value.details()
    return raised.value


@asynccontextmanager
async def served(
    domain: Domain, config: DomainConfig
) -> AsyncIterator[tuple[RunningDomain, domain_pb2_grpc.DomainServiceStub]]:
    """Serves `domain` and yields it with a stub to it."""
    async with domain.serve(config) as running, channel(running.address) as chan:
        yield running, domain_pb2_grpc.DomainServiceStub(chan)


def registry_config(tmp_path: Path, port: int = 0) -> RegistryConfig:
    server = dataclasses.replace(server_config("registry", tmp_path / "registry"), port=port)
    return RegistryConfig(
        server=server,
        settings=RegistrySettings(default_lease_ttl_s=30, deregister_after_s=60, history=100),
        sweep_interval_s=0.05,
    )


async def test_execute_runs_the_action_and_replays_a_repeated_key(tmp_path: Path) -> None:
    probe = Probe()
    async with served(counting_domain(probe), domain_config(tmp_path)) as (_running, stub):
        request = pb.ExecuteRequest(
            domain_id="test_domain",
            action="echo",
            input=struct(text="hello"),
            workflow_id="wf_1",
            execution_id="ex_1",
            step_id="step_1",
            attempt=1,
            idempotency_key="ex_1/step_1",
        )
        first = await stub.Execute(request)
        second = await stub.Execute(request)
    assert dict(first.output) == {"text": "hello", "run": 1.0}
    assert (first.replayed, second.replayed) == (False, True)
    assert second.output == first.output
    assert probe.runs["echo"] == 1
    ctx = probe.contexts[0]
    assert (ctx.workflow_id, ctx.execution_id, ctx.step_id, ctx.attempt) == (
        "wf_1",
        "ex_1",
        "step_1",
        1,
    )


async def test_a_repeated_key_is_replayed_after_the_domain_restarts(tmp_path: Path) -> None:
    probe = Probe()
    domain = counting_domain(probe)
    config = domain_config(tmp_path)
    request = pb.ExecuteRequest(action="echo", input=struct(text="x"), idempotency_key="k1")
    async with domain.serve(config) as running, channel(running.address) as chan:
        first = await domain_pb2_grpc.DomainServiceStub(chan).Execute(request)
    async with domain.serve(config) as running, channel(running.address) as chan:
        again = await domain_pb2_grpc.DomainServiceStub(chan).Execute(request)
    assert again.replayed
    assert again.output == first.output
    assert probe.runs["echo"] == 1


async def test_errors_map_to_status_codes_that_name_the_problem(tmp_path: Path) -> None:
    async with served(counting_domain(Probe()), domain_config(tmp_path)) as (_running, stub):
        unknown = await expect_error(
            stub.Execute(pb.ExecuteRequest(action="nope")), grpc.StatusCode.NOT_FOUND
        )
        assert unknown.details() == "action 'nope' not found"
        bad = await expect_error(
            stub.Execute(pb.ExecuteRequest(action="echo", input=struct(text=5))),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert bad.details() == "input.text: must be a string"
        status = rpc_status.from_call(bad)
        assert status is not None
        assert len(status.details) == 2
        await expect_error(
            stub.Execute(pb.ExecuteRequest(action="")), grpc.StatusCode.INVALID_ARGUMENT
        )
        wrong = await expect_error(
            stub.Execute(pb.ExecuteRequest(domain_id="other", action="echo")),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        assert "this is domain 'test_domain'" in (wrong.details() or "")


async def test_an_unexpected_exception_is_internal_not_unknown(tmp_path: Path) -> None:
    probe = Probe()
    probe.fail_next = 1
    async with served(counting_domain(probe), domain_config(tmp_path)) as (_running, stub):
        await expect_error(
            stub.Execute(pb.ExecuteRequest(action="flaky")), grpc.StatusCode.INTERNAL
        )


async def test_compensate_undoes_with_the_input_and_output(tmp_path: Path) -> None:
    async with served(counting_domain(Probe()), domain_config(tmp_path)) as (_running, stub):
        response = await stub.Compensate(
            pb.CompensateRequest(
                action="echo",
                input=struct(text="x"),
                output=struct(run=4),
                idempotency_key="ex/step_1/compensate",
            )
        )
        again = await stub.Compensate(
            pb.CompensateRequest(
                action="echo", output=struct(run=4), idempotency_key="ex/step_1/compensate"
            )
        )
        nothing = await stub.Compensate(pb.CompensateRequest(action="slow"))
    assert dict(response.output) == {"undone_run": 4.0, "undo": 1.0}
    assert again.replayed
    assert nothing.output["compensated"] is False


async def test_describe_lists_actions_capabilities_and_patterns(tmp_path: Path) -> None:
    async with served(counting_domain(Probe()), domain_config(tmp_path)) as (running, stub):
        described = await stub.DescribeDomain(pb.DescribeDomainRequest(domain_id="test_domain"))
        async with channel(running.address) as chan:
            health = await health_pb2_grpc.HealthStub(chan).Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME)
            )
    assert described.domain_id == "test_domain"
    assert described.version == "1.2.3"
    assert list(described.capabilities) == ["testing", "echo"]
    assert [(a.name, a.compensable) for a in described.actions] == [
        ("echo", True),
        ("slow", False),
        ("flaky", False),
    ]
    assert list(described.event_patterns) == ["ml.*"]
    assert health.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        ("", pb.DELIVERY_OUTCOME_ACK),
        ("retry", pb.DELIVERY_OUTCOME_RETRY),
        ("drop", pb.DELIVERY_OUTCOME_DROP),
        ("crash", pb.DELIVERY_OUTCOME_RETRY),
    ],
)
async def test_deliver_event_answers_with_the_handlers_outcome(
    tmp_path: Path, answer: str, outcome: int
) -> None:
    probe = Probe()
    event = event_pb2.Event(
        id="ev-1",
        event_type="ml.prediction",
        source_domain="ai_domain",
        data=struct(answer=answer),
        sequence=42,
    )
    async with served(counting_domain(probe), domain_config(tmp_path)) as (_running, stub):
        response = await stub.DeliverEvent(
            pb.DeliverEventRequest(domain_id="test_domain", event=event, attempt=2)
        )
    assert response.outcome == outcome
    assert probe.events[0].id == "ev-1"
    assert probe.events[0].sequence == 42
    if answer == "retry":
        assert response.retry_after.ToMilliseconds() == 2500
        assert response.reason == "not now"


async def test_deliver_events_hands_events_over_in_order_and_stops_at_the_first_not_acked(
    tmp_path: Path,
) -> None:
    probe = Probe()
    answers = ["", "", "retry", ""]
    events = [
        event_pb2.Event(
            id=f"ev-{n}",
            event_type="ml.prediction",
            source_domain="ai_domain",
            data=struct(answer=answer),
            sequence=n + 1,
        )
        for n, answer in enumerate(answers)
    ]
    async with served(counting_domain(probe), domain_config(tmp_path)) as (_running, stub):
        response = await stub.DeliverEvents(
            pb.DeliverEventsRequest(domain_id="test_domain", events=events, attempt=3)
        )
        with pytest.raises(grpc.aio.AioRpcError) as untyped:
            await stub.DeliverEvents(
                pb.DeliverEventsRequest(domain_id="test_domain", events=[event_pb2.Event()])
            )
    assert [(r.outcome, r.reason) for r in response.results] == [
        (pb.DELIVERY_OUTCOME_ACK, ""),
        (pb.DELIVERY_OUTCOME_ACK, ""),
        (pb.DELIVERY_OUTCOME_RETRY, "not now"),
    ]
    assert response.results[2].retry_after.ToMilliseconds() == 2500
    assert [e.id for e in probe.events] == ["ev-0", "ev-1", "ev-2"]  # not ev-3
    assert untyped.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "events[0].event_type" in (untyped.value.details() or "")


async def test_the_domain_registers_and_heartbeats_measured_metrics(tmp_path: Path) -> None:
    registry = RegistryServer(registry_config(tmp_path))
    async with serving(registry.config.server, registry) as (registry_server, registry_channel):
        config = domain_config(tmp_path, registry_addr=registry_server.address)
        async with counting_domain(Probe()).serve(config) as running:
            assert running.service.registrar is not None
            stub = registry_pb2_grpc.RegistryServiceStub(registry_channel)
            await eventually(
                lambda: running.service.registrar.registered.is_set(), within_s=10.0, every_s=0.05
            )
            got = await stub.GetDomain(registry_pb2.GetDomainRequest(domain_id="test_domain"))
            assert got.domain.port == running.port
            assert list(got.domain.capabilities) == ["testing", "echo"]
            assert got.domain.version == "1.2.3"
            assert got.domain.metadata["actions"] == "echo,slow,flaky"
            async with channel(running.address) as chan:
                domain_stub = domain_pb2_grpc.DomainServiceStub(chan)
                for _ in range(3):
                    await domain_stub.Execute(pb.ExecuteRequest(action="flaky"))
                await expect_error(
                    domain_stub.Execute(pb.ExecuteRequest(action="flaky", input=struct(bad=1))),
                    grpc.StatusCode.INVALID_ARGUMENT,
                )

            async def reported() -> bool:
                response = await stub.GetDomain(
                    registry_pb2.GetDomainRequest(domain_id="test_domain")
                )
                return response.domain.metrics.latency_ms > 0

            await eventually(reported, within_s=10.0, every_s=0.05)
            got = await stub.GetDomain(registry_pb2.GetDomainRequest(domain_id="test_domain"))
            assert got.domain.metrics.success_rate == 1.0
            assert got.domain.metrics.load == 0.0
            assert running.service.registrar.heartbeats >= 1
        # A graceful stop leaves the registry.
        await expect_error(
            stub.GetDomain(registry_pb2.GetDomainRequest(domain_id="test_domain")),
            grpc.StatusCode.NOT_FOUND,
        )


async def test_a_domain_started_before_the_registry_registers_once_it_is_up(
    tmp_path: Path,
) -> None:
    port = free_port()
    config = domain_config(tmp_path, registry_addr=f"127.0.0.1:{port}")
    async with counting_domain(Probe()).serve(config) as running:
        registrar = running.service.registrar
        await eventually(lambda: registrar.failures >= 2, within_s=10.0, every_s=0.05)
        assert not registrar.registered.is_set()
        async with channel(running.address) as chan:
            served = await domain_pb2_grpc.DomainServiceStub(chan).Execute(
                pb.ExecuteRequest(action="echo", input=struct(text="still serving"))
            )
        assert served.output["text"] == "still serving"
        registry = RegistryServer(registry_config(tmp_path, port))
        async with serving(registry.config.server, registry) as (_, registry_channel):
            await eventually(lambda: registrar.registered.is_set(), within_s=10.0, every_s=0.05)
            got = await registry_pb2_grpc.RegistryServiceStub(registry_channel).GetDomain(
                registry_pb2.GetDomainRequest(domain_id="test_domain")
            )
            assert got.domain.port == running.port


async def test_a_domain_the_registry_forgot_registers_again(tmp_path: Path) -> None:
    registry = RegistryServer(registry_config(tmp_path))
    async with serving(registry.config.server, registry) as (registry_server, registry_channel):
        config = domain_config(tmp_path, registry_addr=registry_server.address)
        async with counting_domain(Probe()).serve(config) as running:
            registrar = running.service.registrar
            await eventually(lambda: registrar.registered.is_set(), within_s=10.0, every_s=0.05)
            stub = registry_pb2_grpc.RegistryServiceStub(registry_channel)
            await stub.DeregisterDomain(
                registry_pb2.DeregisterDomainRequest(domain_id="test_domain")
            )
            await eventually(lambda: registrar.registrations >= 2, within_s=10.0, every_s=0.05)
            got = await stub.GetDomain(registry_pb2.GetDomainRequest(domain_id="test_domain"))
            assert got.domain.port == running.port


async def test_two_instances_of_one_domain_id_both_appear_in_the_registry(
    tmp_path: Path,
) -> None:
    registry = RegistryServer(registry_config(tmp_path))
    async with serving(registry.config.server, registry) as (registry_server, registry_channel):
        stub = registry_pb2_grpc.RegistryServiceStub(registry_channel)

        def config(name: str, **changes: object) -> DomainConfig:
            return domain_config(tmp_path / name, registry_addr=registry_server.address, **changes)

        async def instances() -> list[tuple[str, int]]:
            got = await stub.GetDomain(registry_pb2.GetDomainRequest(domain_id="test_domain"))
            return sorted((i.instance_id, i.port) for i in got.domain.instances)

        async with counting_domain(Probe()).serve(config("a", advertise_host="127.0.0.1")) as first:
            alone = [(f"127.0.0.1:{first.port}", first.port)]
            async with counting_domain(Probe()).serve(config("b", instance_id="second")) as second:
                await eventually(
                    lambda: second.service.registrar.heartbeats >= 2, within_s=10.0, every_s=0.05
                )
                await eventually(
                    lambda: first.service.registrar.heartbeats >= 2, within_s=10.0, every_s=0.05
                )
                assert await instances() == sorted([*alone, ("second", second.port)])
                got = await stub.GetDomain(registry_pb2.GetDomainRequest(domain_id="test_domain"))
                assert got.domain.status == registry_pb2.DOMAIN_STATUS_HEALTHY
                statuses = {i.status for i in got.domain.instances}
                assert statuses == {registry_pb2.DOMAIN_STATUS_HEALTHY}
            # The second stopped gracefully: it deregistered itself only.
            assert await instances() == alone
