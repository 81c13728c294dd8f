"""The scheduler over gRPC: every RPC, the error codes of bad requests, health, the
DomainService actions workflows use, and a firing reaching the bus and the log outboxes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grace.domain.v1 import domain_pb2, domain_pb2_grpc
from grace.kernels.immutable_log.v1 import immutable_log_pb2 as log_pb
from grace.kernels.immutable_log.v1 import immutable_log_pb2_grpc
from grace.kernels.scheduler.v1 import scheduler_pb2 as pb
from grace.kernels.scheduler.v1 import scheduler_pb2_grpc
from services.common.timestamps import to_duration, to_timestamp
from services.kernels.immutable_log.config import LogConfig
from services.kernels.immutable_log.log import LogSettings
from services.kernels.immutable_log.server import ImmutableLogServer
from services.kernels.scheduler.config import SchedulerConfig
from services.kernels.scheduler.firer import SchedulerSettings
from services.kernels.scheduler.server import SchedulerServer
from tests.kernels.scheduler.doubles import ListPublisher, RecordingPeers, ScriptedGate
from tests.support import eventually, server_config, serving


class Running:
    def __init__(
        self, stub: scheduler_pb2_grpc.SchedulerServiceStub, chan: grpc.aio.Channel
    ) -> None:
        self.stub = stub
        self.chan = chan
        self.peers = RecordingPeers()
        self.bus = ListPublisher()
        self.log = ListPublisher()


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    config = SchedulerConfig(
        server=server_config("scheduler", tmp_path),
        settings=SchedulerSettings(poll_interval_s=0.05),
        relay_interval_s=0.05,
    )
    peers = RecordingPeers()
    bus, log = ListPublisher(), ListPublisher()
    service = SchedulerServer(config, peers=peers, gate=ScriptedGate(), bus=bus, immutable_log=log)
    async with serving(config.server, service) as (_, chan):
        r = Running(scheduler_pb2_grpc.SchedulerServiceStub(chan), chan)
        r.peers, r.bus, r.log = peers, bus, log
        yield r


def tuesday_spec() -> pb.ScheduleSpec:
    data = struct_pb2.Struct()
    data.update({"service": "auth", "replicas": 6})
    return pb.ScheduleSpec(
        cron=pb.CronSpec(expression="0 13 * * TUE", time_zone="Europe/Paris"),
        event=pb.EventAction(event_type="capacity.scale_requested", data=data),
        owner="operator:alice",
        description="scale auth before the Tuesday 2pm peak",
    )


async def test_create_get_list_pause_resume_delete_round_trip(running: Running) -> None:
    stub = running.stub
    created = await stub.CreateSchedule(
        pb.CreateScheduleRequest(schedule_id="scale-auth", spec=tuesday_spec())
    )
    schedule = created.schedule
    assert schedule.state == pb.SCHEDULE_STATE_ACTIVE
    assert schedule.spec.cron.time_zone == "Europe/Paris"
    assert schedule.spec.event.data["service"] == "auth"
    assert schedule.next_due_time.ToDatetime().weekday() == 1
    got = await stub.GetSchedule(pb.GetScheduleRequest(schedule_id="scale-auth"))
    assert got.schedule.next_due_time == schedule.next_due_time
    # The owner is the authenticated caller (the test PKI's admin), not the name it sent.
    listed = await stub.ListSchedules(pb.ListSchedulesRequest(owner="test-admin"))
    assert [s.schedule_id for s in listed.schedules] == ["scale-auth"]
    paused = await stub.PauseSchedule(pb.PauseScheduleRequest(schedule_id="scale-auth"))
    assert paused.schedule.state == pb.SCHEDULE_STATE_PAUSED
    assert not paused.schedule.HasField("next_fire_time")
    active = await stub.ListSchedules(pb.ListSchedulesRequest(state=pb.SCHEDULE_STATE_ACTIVE))
    assert list(active.schedules) == []
    resumed = await stub.ResumeSchedule(pb.ResumeScheduleRequest(schedule_id="scale-auth"))
    assert resumed.schedule.state == pb.SCHEDULE_STATE_ACTIVE
    await stub.DeleteSchedule(pb.DeleteScheduleRequest(schedule_id="scale-auth"))
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await stub.GetSchedule(pb.GetScheduleRequest(schedule_id="scale-auth"))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_trigger_fires_the_action_and_announces_it_on_the_bus_and_in_the_log(
    running: Running,
) -> None:
    stub = running.stub
    await stub.CreateSchedule(pb.CreateScheduleRequest(schedule_id="s", spec=tuesday_spec()))
    firing = (
        await stub.TriggerSchedule(pb.TriggerScheduleRequest(schedule_id="s", request_id="r"))
    ).firing
    assert firing.outcome == pb.FIRING_OUTCOME_PENDING

    async def fired() -> bool:
        return any(e.event_type == "schedule.fired" for e in running.log.events)

    await eventually(fired, within_s=10, every_s=0.05)
    got = await stub.GetSchedule(pb.GetScheduleRequest(schedule_id="s"))
    [recent] = got.schedule.recent_firings
    assert (recent.firing_id, recent.outcome) == (firing.firing_id, pb.FIRING_OUTCOME_SUCCEEDED)
    assert recent.cause == pb.FIRING_CAUSE_TRIGGER
    assert recent.attempt == 1

    async def published() -> bool:
        return any(e.event_type == "capacity.scale_requested" for e in running.bus.events)

    await eventually(published, within_s=10, every_s=0.05)
    [scale] = [e for e in running.bus.events if e.event_type == "capacity.scale_requested"]
    assert scale.data["replicas"] == 6
    firings = await stub.ListFirings(pb.ListFiringsRequest(schedule_id="s"))
    assert [f.firing_id for f in firings.firings] == [firing.firing_id]


async def test_an_interval_schedule_fires_by_itself(running: Running) -> None:
    spec = pb.ScheduleSpec(
        interval=pb.IntervalSpec(every=to_duration(1)),
        workflow=pb.WorkflowAction(workflow_id="doc-flow"),
        owner="operator:alice",
    )
    await running.stub.CreateSchedule(pb.CreateScheduleRequest(schedule_id="tick", spec=spec))

    async def fired_twice() -> bool:
        return len(running.peers.workflows) >= 2

    await eventually(fired_twice, within_s=10, every_s=0.05)
    keys = [w[2] for w in running.peers.workflows]
    assert len(set(keys)) == len(keys)


async def test_backfill_queues_the_past_due_times(running: Running) -> None:
    now = time.time()
    spec = pb.ScheduleSpec(
        interval=pb.IntervalSpec(every=to_duration(60), start_time=to_timestamp(now - 600)),
        workflow=pb.WorkflowAction(workflow_id="doc-flow"),
        owner="operator:alice",
        missed_fire_policy=pb.MISSED_FIRE_POLICY_SKIP,
    )
    await running.stub.CreateSchedule(pb.CreateScheduleRequest(schedule_id="b", spec=spec))
    result = await running.stub.BackfillSchedule(
        pb.BackfillScheduleRequest(
            schedule_id="b",
            start_time=to_timestamp(now - 600),
            end_time=to_timestamp(now - 300),
        )
    )
    assert len(result.queued) == 5

    async def ran() -> bool:
        return len(running.peers.workflows) >= 5

    await eventually(ran, within_s=10, every_s=0.05)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (pb.ScheduleSpec(owner="o", event=pb.EventAction(event_type="x")), "spec"),
        (
            pb.ScheduleSpec(
                owner="o",
                cron=pb.CronSpec(expression="99 * * * *"),
                event=pb.EventAction(event_type="x"),
            ),
            "spec.cron.expression",
        ),
        (
            pb.ScheduleSpec(
                owner="o",
                cron=pb.CronSpec(expression="* * * * *", time_zone="Nowhere/Land"),
                event=pb.EventAction(event_type="x"),
            ),
            "spec.cron.time_zone",
        ),
        (
            pb.ScheduleSpec(
                owner="o",
                interval=pb.IntervalSpec(every=to_duration(0.5)),
                event=pb.EventAction(event_type="x"),
            ),
            "spec.interval.every",
        ),
        (
            pb.ScheduleSpec(
                owner="",
                interval=pb.IntervalSpec(every=to_duration(5)),
                event=pb.EventAction(event_type="x"),
            ),
            "spec.owner",
        ),
        (
            pb.ScheduleSpec(
                owner="o",
                interval=pb.IntervalSpec(every=to_duration(5)),
                domain=pb.DomainAction(action="scale"),
            ),
            "spec.domain",
        ),
        (
            pb.ScheduleSpec(
                owner="o",
                interval=pb.IntervalSpec(every=to_duration(5)),
                event=pb.EventAction(event_type="x"),
                jitter=to_duration(7200),
            ),
            "spec.jitter",
        ),
    ],
)
async def test_bad_specs_are_invalid_arguments_naming_the_field(
    running: Running, spec: pb.ScheduleSpec, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await running.stub.CreateSchedule(pb.CreateScheduleRequest(spec=spec))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (bad.value.details() or "").startswith(f"{field}:")


async def test_a_task_action_is_refused_while_no_tasks_service_is_configured(
    running: Running,
) -> None:
    spec = pb.ScheduleSpec(
        interval=pb.IntervalSpec(every=to_duration(60)),
        task=pb.TaskAction(title="review capacity"),
        owner="operator:alice",
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await running.stub.CreateSchedule(pb.CreateScheduleRequest(spec=spec))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "tasks" in (refused.value.details() or "")


async def test_health_is_serving_for_the_scheduler_and_domain_services(running: Running) -> None:
    health = health_pb2_grpc.HealthStub(running.chan)
    for service in (
        "",
        "grace.kernels.scheduler.v1.SchedulerService",
        "grace.domain.v1.DomainService",
    ):
        answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_workflow_step_creates_and_triggers_a_schedule_through_domain_service(
    running: Running,
) -> None:
    domain = domain_pb2_grpc.DomainServiceStub(running.chan)
    described = await domain.DescribeDomain(domain_pb2.DescribeDomainRequest())
    assert described.capabilities == ["scheduling"]
    assert {"create_schedule", "trigger_schedule", "pause_schedule"} <= {
        a.name for a in described.actions
    }
    spec = json_format.MessageToDict(tuesday_spec())
    request = domain_pb2.ExecuteRequest(
        domain_id="scheduler", action="create_schedule", idempotency_key="exec-1/step_1"
    )
    request.input.update({"schedule_id": "from-step", "spec": spec})
    first = await domain.Execute(request)
    again = await domain.Execute(request)
    assert first.output["schedule"]["schedule_id"] == "from-step"
    assert again.output == first.output  # the same step key creates it once
    bad = domain_pb2.ExecuteRequest(domain_id="scheduler", action="create_schedule")
    bad.input.update({"spec": {"no_such_field": 1}})
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await domain.Execute(bad)
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    undo = domain_pb2.CompensateRequest(domain_id="scheduler", action="create_schedule")
    undo.output.CopyFrom(first.output)
    await domain.Compensate(undo)
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await running.stub.GetSchedule(pb.GetScheduleRequest(schedule_id="from-step"))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_stats_count_schedules_and_firings(running: Running) -> None:
    await running.stub.CreateSchedule(
        pb.CreateScheduleRequest(schedule_id="a", spec=tuesday_spec())
    )
    await running.stub.CreateSchedule(
        pb.CreateScheduleRequest(schedule_id="b", spec=tuesday_spec(), paused=True)
    )
    stats = await running.stub.GetSchedulerStats(pb.GetSchedulerStatsRequest())
    assert dict(stats.schedules_by_state) == {
        "SCHEDULE_STATE_ACTIVE": 1,
        "SCHEDULE_STATE_PAUSED": 1,
    }
    assert stats.instance_id.startswith("scheduler-")


async def test_a_firing_is_appended_to_a_real_immutable_log(tmp_path: Path) -> None:
    log_service = ImmutableLogServer(
        LogConfig(
            server=server_config("immutable_log", tmp_path / "log"),
            settings=LogSettings(origin="grace.test/scheduler-log"),
            key_file=tmp_path / "log" / "immutable_log.key",
            registration=None,
        )
    )
    async with AsyncExitStack() as stack:
        log_server, log_chan = await stack.enter_async_context(
            serving(log_service.config.server, log_service)
        )
        config = SchedulerConfig(
            server=server_config("scheduler", tmp_path / "scheduler"),
            settings=SchedulerSettings(poll_interval_s=0.05),
            relay_interval_s=0.05,
            immutable_log_address=log_server.address,
        )
        service = SchedulerServer(
            config, peers=RecordingPeers(), gate=ScriptedGate(), bus=ListPublisher()
        )
        _, chan = await stack.enter_async_context(serving(config.server, service))
        stub = scheduler_pb2_grpc.SchedulerServiceStub(chan)
        log_stub = immutable_log_pb2_grpc.ImmutableLogServiceStub(log_chan)
        await stub.CreateSchedule(pb.CreateScheduleRequest(schedule_id="s", spec=tuesday_spec()))
        await stub.TriggerSchedule(pb.TriggerScheduleRequest(schedule_id="s"))

        async def logged() -> bool:
            got = await log_stub.GetEntries(log_pb.GetEntriesRequest(start=0, page_size=100))
            return any(e.data.kind == "schedule.fired" for e in got.entries)

        await eventually(logged, within_s=10, every_s=0.05)
        got = await log_stub.GetEntries(log_pb.GetEntriesRequest(start=0, page_size=100))
    fired = next(e for e in got.entries if e.data.kind == "schedule.fired")
    assert fired.data.actor == "scheduler"
    assert fired.data.data["owner"] == "test-admin"  # the authenticated creator
    assert fired.data.data["outcome"] == "succeeded"
    assert got.entries[0].data.kind == "schedule.created"
