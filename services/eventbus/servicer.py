"""gRPC adapter of the event bus: proto in, core call, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeAlias

import grpc
from opentelemetry import propagate

from grace.eventbus.v1 import event_pb2, eventbus_pb2, eventbus_pb2_grpc
from services.common.access import rule_for
from services.common.auth import current_principal
from services.common.timestamps import from_timestamp, to_timestamp
from services.common.wire import int_field, passthrough, repeated_message
from services.eventbus.bus import EventBus, PublishOutcome
from services.eventbus.envelope import validate_patterns
from services.eventbus.model import ConsumerState, DeadLetterRecord, Start, StartSpec
from services.eventbus.model import SubscriptionState as Sub

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

SERVICE_NAME = eventbus_pb2.DESCRIPTOR.services_by_name["EventBusService"].full_name

_START: dict[int, Start] = {
    eventbus_pb2.START_POSITION_UNSPECIFIED: Start.DEFAULT,
    eventbus_pb2.START_POSITION_NEW: Start.NEW,
    eventbus_pb2.START_POSITION_ALL: Start.ALL,
    eventbus_pb2.START_POSITION_SEQUENCE: Start.SEQUENCE,
    eventbus_pb2.START_POSITION_TIME: Start.TIME,
}


_SUBSCRIBE_FIELDS = eventbus_pb2.SubscribeResponse.DESCRIPTOR.fields_by_name
_SUBSCRIBE_EVENTS = _SUBSCRIBE_FIELDS["events"].number
_SUBSCRIBE_HEAD = _SUBSCRIBE_FIELDS["head_sequence"].number


def add_to_server(servicer: EventBusServicer, server: grpc.aio.Server) -> None:
    """Registers the servicer as the generated code would, except that Subscribe's
    responses may be the bytes of a SubscribeResponse (sent as they are)."""
    handlers = _GeneratedHandlers()
    eventbus_pb2_grpc.add_EventBusServiceServicer_to_server(servicer, handlers)  # type: ignore[arg-type]
    handlers.methods["Subscribe"] = grpc.unary_stream_rpc_method_handler(
        servicer.Subscribe,
        request_deserializer=eventbus_pb2.SubscribeRequest.FromString,
        response_serializer=passthrough(eventbus_pb2.SubscribeResponse.SerializeToString),
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers.methods),)
    )
    server.add_registered_method_handlers(SERVICE_NAME, handlers.methods)


class _GeneratedHandlers:
    """Takes the method handlers the generated registration function makes."""

    def __init__(self) -> None:
        self.methods: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the same handlers come to add_registered_method_handlers

    def add_registered_method_handlers(
        self, service: str, methods: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.methods = dict(methods)


def _trace_context() -> tuple[str, str]:
    """The caller's W3C trace context (from the tracing interceptor's span), if any: events
    published without one carry it, so consumers can link their spans to the producer."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent", ""), carrier.get("tracestate", "")


def _start(kind: int, sequence: int, stamp: Any) -> StartSpec:
    return StartSpec(_START.get(kind, Start.DEFAULT), sequence, from_timestamp(stamp))


class EventBusServicer(eventbus_pb2_grpc.EventBusServiceServicer):
    """Serves `grace.eventbus.v1.EventBusService` over an `EventBus` core."""

    def __init__(self, bus: EventBus) -> None:
        self._bus = bus

    def _subscription(self, sub: Sub) -> eventbus_pb2.Subscription:
        return eventbus_pb2.Subscription(
            subscription_id=sub.subscription_id,
            domain_id=sub.domain_id,
            patterns=sub.patterns,
            created_at=to_timestamp(sub.created_at),
            max_attempts=sub.max_attempts,
            delivered_sequence=sub.delivered_sequence,
            delivered_count=sub.delivered_count,
            redelivery_count=sub.redelivery_count,
            dead_letter_count=sub.dead_letter_count,
            lag=self._bus.lag(sub.delivered_sequence),
            last_error=sub.last_error,
        )

    async def Publish(
        self, request: eventbus_pb2.PublishRequest, context: Context
    ) -> eventbus_pb2.PublishResponse:
        event = event_pb2.Event(
            id=request.id,
            event_type=request.event_type,
            source_domain=request.source_domain,
            subject=request.subject,
            traceparent=request.traceparent,
            tracestate=request.tracestate,
            signature=request.signature,
            signature_key_id=request.signature_key_id,
            signature_leaf_index=request.signature_leaf_index,
            signature_batch_size=request.signature_batch_size,
            signature_inclusion_path=request.signature_inclusion_path,
        )
        if not event.traceparent:
            event.traceparent, event.tracestate = _trace_context()
        if request.HasField("time"):
            event.time.CopyFrom(request.time)
        if request.HasField("data"):
            event.data.CopyFrom(request.data)
        result = await self._bus.publish(event)
        return eventbus_pb2.PublishResponse(
            id=result.event_id,
            sequence=result.sequence,
            duplicate=result.duplicate,
            time=event.time,
        )

    async def PublishBatch(
        self, request: eventbus_pb2.PublishBatchRequest, context: Context
    ) -> eventbus_pb2.PublishBatchResponse:
        traceparent, tracestate = _trace_context()
        if traceparent:
            for event in request.events:
                if not event.traceparent:
                    event.traceparent, event.tracestate = traceparent, tracestate
        outcomes = await self._bus.publish_batch(request.events)
        response = eventbus_pb2.PublishBatchResponse()
        add = response.results.add
        stored, duplicate = (
            eventbus_pb2.PUBLISH_STATUS_STORED,
            eventbus_pb2.PUBLISH_STATUS_DUPLICATE,
        )
        for event_id, appended, error in outcomes:  # unpacked: cheaper than named reads
            if appended is None:
                add(id=event_id, status=eventbus_pb2.PUBLISH_STATUS_REJECTED, error=error)
            else:
                status = duplicate if appended.duplicate else stored
                add(id=event_id, sequence=appended.sequence, status=status)
        return response

    async def PublishStream(
        self,
        requests: AsyncIterator[eventbus_pb2.PublishStreamRequest],
        context: Context,
    ) -> AsyncIterator[eventbus_pb2.PublishStreamResponse]:
        traceparent, tracestate = _trace_context()

        async def batches() -> AsyncIterator[Sequence[event_pb2.Event]]:
            async for request in requests:
                events = request.events
                if traceparent:
                    for event in events:
                        if not event.traceparent:
                            event.traceparent, event.tracestate = traceparent, tracestate
                yield events

        async for outcomes in self._bus.publish_stream(batches(), _publish_refusal()):
            yield _stream_ack(outcomes)

    async def Subscribe(  # type: ignore[override]  # yields a SubscribeResponse's bytes
        self, request: eventbus_pb2.SubscribeRequest, context: Context
    ) -> AsyncIterator[bytes]:
        patterns = validate_patterns(request.pattern, request.patterns, required=False)
        stream = self._bus.subscribe(
            patterns,
            _start(request.start, request.start_sequence, request.start_time),
            consumer=request.consumer,
            source_domain=request.source_domain,
            max_batch=request.max_batch,
        )
        async for batch in stream:
            # The response's bytes, written from the events' stored bytes instead of
            # copying each event into a SubscribeResponse and serializing that (see
            # `services.common.wire`); `add_to_server` sends them as they are.
            yield repeated_message(_SUBSCRIBE_EVENTS, batch.encoded) + int_field(
                _SUBSCRIBE_HEAD, self._bus.log.head
            )

    async def Ack(
        self, request: eventbus_pb2.AckRequest, context: Context
    ) -> eventbus_pb2.AckResponse:
        acked = await self._bus.ack(request.consumer, request.sequence)
        return eventbus_pb2.AckResponse(acked_sequence=acked)

    async def CreateSubscription(
        self, request: eventbus_pb2.CreateSubscriptionRequest, context: Context
    ) -> eventbus_pb2.CreateSubscriptionResponse:
        patterns = validate_patterns(request.pattern, request.patterns, required=True)
        sub, created = await self._bus.create_subscription(
            request.domain_id,
            patterns,
            subscription_id=request.subscription_id,
            start=_start(request.start, request.start_sequence, request.start_time),
            max_attempts=request.max_attempts,
        )
        return eventbus_pb2.CreateSubscriptionResponse(
            subscription=self._subscription(sub), created=created
        )

    async def DeleteSubscription(
        self, request: eventbus_pb2.DeleteSubscriptionRequest, context: Context
    ) -> eventbus_pb2.DeleteSubscriptionResponse:
        sub = await self._bus.delete_subscription(request.subscription_id)
        return eventbus_pb2.DeleteSubscriptionResponse(subscription=self._subscription(sub))

    async def ListSubscriptions(
        self, request: eventbus_pb2.ListSubscriptionsRequest, context: Context
    ) -> eventbus_pb2.ListSubscriptionsResponse:
        subs, token = self._bus.list_subscriptions(
            domain_id=request.domain_id, size=request.page_size, token=request.page_token
        )
        return eventbus_pb2.ListSubscriptionsResponse(
            subscriptions=[self._subscription(s) for s in subs], next_page_token=token
        )

    async def GetHistory(
        self, request: eventbus_pb2.GetHistoryRequest, context: Context
    ) -> eventbus_pb2.GetHistoryResponse:
        found, token = await self._bus.history(
            pattern=request.pattern,
            source_domain=request.source_domain,
            start_time=from_timestamp(request.start_time),
            end_time=from_timestamp(request.end_time),
            size=request.page_size,
            token=request.page_token,
            newest_first=request.newest_first,
        )
        return eventbus_pb2.GetHistoryResponse(events=found, next_page_token=token)

    async def GetStats(
        self, request: eventbus_pb2.GetStatsRequest, context: Context
    ) -> eventbus_pb2.GetStatsResponse:
        stats = await self._bus.stats()
        return eventbus_pb2.GetStatsResponse(
            published_total=stats.published_total,
            duplicates_total=stats.duplicates_total,
            streamed_total=stats.streamed_total,
            delivered_total=stats.delivered_total,
            head_sequence=stats.head_sequence,
            first_sequence=stats.first_sequence,
            retained_events=stats.retained_events,
            events_by_type=stats.events_by_type,
            subscriptions=[self._subscription(s) for s in stats.subscriptions],
            consumers=[self._consumer(c) for c in stats.consumers],
            dead_letters=stats.dead_letters,
            active_streams=stats.active_streams,
        )

    def _consumer(self, consumer: ConsumerState) -> eventbus_pb2.ConsumerStats:
        return eventbus_pb2.ConsumerStats(
            consumer=consumer.name,
            patterns=consumer.patterns,
            acked_sequence=consumer.acked_sequence,
            lag=self._bus.lag(consumer.acked_sequence),
        )

    async def ListDeadLetters(
        self, request: eventbus_pb2.ListDeadLettersRequest, context: Context
    ) -> eventbus_pb2.ListDeadLettersResponse:
        records, token = await self._bus.list_dead_letters(
            subscription_id=request.subscription_id,
            size=request.page_size,
            token=request.page_token,
        )
        return eventbus_pb2.ListDeadLettersResponse(
            dead_letters=[_dead_letter(r) for r in records], next_page_token=token
        )

    async def RedeliverDeadLetter(
        self, request: eventbus_pb2.RedeliverDeadLetterRequest, context: Context
    ) -> eventbus_pb2.RedeliverDeadLetterResponse:
        record = await self._bus.redeliver_dead_letter(request.dead_letter_id)
        return eventbus_pb2.RedeliverDeadLetterResponse(dead_letter=_dead_letter(record))


_PUBLISH_STREAM_RULE = rule_for(f"/{SERVICE_NAME}/PublishStream")


def _publish_refusal() -> Callable[[str], str | None] | None:
    """Whether the stream's caller may publish in a source's name, per the access rule
    (None when security is off: there is no caller to check)."""
    principal = current_principal()
    rule = _PUBLISH_STREAM_RULE
    if principal is None or rule is None:
        return None
    return lambda source: rule.refuse_owned(principal, (source,))


def _stream_ack(outcomes: list[PublishOutcome]) -> eventbus_pb2.PublishStreamResponse:
    """One message's acks as columns: a few C-level extends instead of one message each."""
    ack = eventbus_pb2.PublishStreamResponse()
    stored, duplicate, rejected = (
        eventbus_pb2.PUBLISH_STATUS_STORED,
        eventbus_pb2.PUBLISH_STATUS_DUPLICATE,
        eventbus_pb2.PUBLISH_STATUS_REJECTED,
    )
    ack.ids.extend([o.event_id for o in outcomes])
    ack.sequences.extend([0 if o.appended is None else o.appended.sequence for o in outcomes])
    ack.statuses.extend(
        [
            rejected if o.appended is None else duplicate if o.appended.duplicate else stored
            for o in outcomes
        ]
    )
    add = ack.rejections.add
    for index, outcome in enumerate(outcomes):
        if outcome.appended is None:
            add(index=index, error=outcome.error)
    return ack


def _dead_letter(record: DeadLetterRecord) -> eventbus_pb2.DeadLetter:
    event = event_pb2.Event()
    event.ParseFromString(record.event)
    return eventbus_pb2.DeadLetter(
        dead_letter_id=record.dead_letter_id,
        subscription_id=record.subscription_id,
        domain_id=record.domain_id,
        event=event,
        attempts=record.attempts,
        reason=record.reason,
        failed_at=to_timestamp(record.failed_at),
        redelivering=record.redelivering,
    )
