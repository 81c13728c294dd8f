"""gRPC adapter of the scheduler: proto in, core call, proto out."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeAlias

import grpc

from grace.kernels.scheduler.v1 import scheduler_pb2 as pb
from grace.kernels.scheduler.v1 import scheduler_pb2_grpc
from services.common.auth import acting_for
from services.common.timestamps import from_timestamp, to_timestamp
from services.common.validation import require_id, require_text
from services.kernels.scheduler.scheduler import Scheduler
from services.kernels.scheduler.wire import (
    STATE_FROM_PROTO,
    firing_to_proto,
    schedule_to_proto,
    spec_from_proto,
)

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    """Serves `grace.kernels.scheduler.v1.SchedulerService` over a `Scheduler` core."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    async def CreateSchedule(
        self, request: pb.CreateScheduleRequest, context: Context
    ) -> pb.CreateScheduleResponse:
        if request.schedule_id:
            require_id("schedule_id", request.schedule_id)
        require_text("request_id", request.request_id, max_length=128)
        spec = spec_from_proto(request.spec)
        # The owner is the principal its firings are governed as: the authenticated
        # caller, not a name it chose (a Grace component may create for another).
        owner = acting_for(spec.owner)
        if owner != spec.owner:
            spec = dataclasses.replace(spec, owner=owner)
        schedule = await self._scheduler.create(
            request.schedule_id,
            spec,
            request_id=request.request_id,
            paused=request.paused,
        )
        return pb.CreateScheduleResponse(schedule=schedule_to_proto(schedule))

    async def ListSchedules(
        self, request: pb.ListSchedulesRequest, context: Context
    ) -> pb.ListSchedulesResponse:
        require_text("owner", request.owner, max_length=128)
        page, token = await self._scheduler.page(
            request.owner,
            STATE_FROM_PROTO.get(request.state),
            request.page_size,
            request.page_token,
        )
        return pb.ListSchedulesResponse(
            schedules=[schedule_to_proto(s) for s in page], next_page_token=token
        )

    async def GetSchedule(
        self, request: pb.GetScheduleRequest, context: Context
    ) -> pb.GetScheduleResponse:
        schedule, recent = await self._scheduler.get(require_id("schedule_id", request.schedule_id))
        return pb.GetScheduleResponse(schedule=schedule_to_proto(schedule, recent))

    async def PauseSchedule(
        self, request: pb.PauseScheduleRequest, context: Context
    ) -> pb.PauseScheduleResponse:
        require_text("reason", request.reason, max_length=1024)
        schedule = await self._scheduler.pause(require_id("schedule_id", request.schedule_id))
        return pb.PauseScheduleResponse(schedule=schedule_to_proto(schedule))

    async def ResumeSchedule(
        self, request: pb.ResumeScheduleRequest, context: Context
    ) -> pb.ResumeScheduleResponse:
        schedule = await self._scheduler.resume(require_id("schedule_id", request.schedule_id))
        return pb.ResumeScheduleResponse(schedule=schedule_to_proto(schedule))

    async def TriggerSchedule(
        self, request: pb.TriggerScheduleRequest, context: Context
    ) -> pb.TriggerScheduleResponse:
        require_text("request_id", request.request_id, max_length=128)
        firing = await self._scheduler.trigger(
            require_id("schedule_id", request.schedule_id), request.request_id
        )
        return pb.TriggerScheduleResponse(firing=firing_to_proto(firing))

    async def BackfillSchedule(
        self, request: pb.BackfillScheduleRequest, context: Context
    ) -> pb.BackfillScheduleResponse:
        result = await self._scheduler.backfill(
            require_id("schedule_id", request.schedule_id),
            from_timestamp(request.start_time),
            from_timestamp(request.end_time),
        )
        return pb.BackfillScheduleResponse(
            queued=[to_timestamp(t) for t in result.queued], already_fired=result.already_fired
        )

    async def DeleteSchedule(
        self, request: pb.DeleteScheduleRequest, context: Context
    ) -> pb.DeleteScheduleResponse:
        schedule_id = require_id("schedule_id", request.schedule_id)
        await self._scheduler.delete(schedule_id)
        return pb.DeleteScheduleResponse(schedule_id=schedule_id)

    async def ListFirings(
        self, request: pb.ListFiringsRequest, context: Context
    ) -> pb.ListFiringsResponse:
        page, token = await self._scheduler.firings(
            require_id("schedule_id", request.schedule_id), request.page_size, request.page_token
        )
        return pb.ListFiringsResponse(
            firings=[firing_to_proto(f) for f in page], next_page_token=token
        )

    async def GetSchedulerStats(
        self, request: pb.GetSchedulerStatsRequest, context: Context
    ) -> pb.GetSchedulerStatsResponse:
        stats = await self._scheduler.stats()
        return pb.GetSchedulerStatsResponse(
            schedules_by_state={
                f"SCHEDULE_STATE_{k.upper()}": v for k, v in stats.schedules_by_state.items()
            },
            firings_by_outcome={
                f"FIRING_OUTCOME_{k.upper()}": v for k, v in stats.firings_by_outcome.items()
            },
            fired_here=stats.fired_here,
            instance_id=stats.instance_id,
        )
