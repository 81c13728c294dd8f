"""The floor under the event bus's figures: the bus's gRPC API with nothing behind it.

A server of `EventBusService` that keeps nothing and checks nothing: Publish,
PublishBatch and PublishStream hand each event straight to every open Subscribe stream
(in memory, no sequence order beyond arrival, no patterns, no durability, no auth),
GetStats counts the streams, and the standard health service says SERVING.
`benchmarks/eventbus.py` drives it with the very client code it drives the bus with, in a
process of its own as the bus is, so the difference between the two is what the bus's own
work costs (validation, the durable commit, indexing, delivery bookkeeping) and the rest
is what Python gRPC costs per call and per message on this machine.

    .venv/bin/python benchmarks/grpc_relay.py --port 50099

It serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from grace.eventbus.v1 import event_pb2, eventbus_pb2, eventbus_pb2_grpc

# A subscriber that falls this far behind is dropped: the relay must not grow without
# bound when a benchmark's consumer dies.
QUEUE_LIMIT = 1_000_000

Context = grpc.aio.ServicerContext[Any, Any]


class Relay(eventbus_pb2_grpc.EventBusServiceServicer):
    def __init__(self) -> None:
        self.streams: set[asyncio.Queue[event_pb2.Event]] = set()
        self.published = 0

    def fan_out(self, events: Iterable[event_pb2.Event]) -> list[int]:
        sequences = []
        for event in events:
            self.published += 1
            event.sequence = self.published
            sequences.append(self.published)
            for queue in list(self.streams):
                if queue.qsize() >= QUEUE_LIMIT:
                    self.streams.discard(queue)
                else:
                    queue.put_nowait(event)
        return sequences

    async def Publish(
        self, request: eventbus_pb2.PublishRequest, context: Context
    ) -> eventbus_pb2.PublishResponse:
        event = event_pb2.Event(
            id=request.id,
            event_type=request.event_type,
            source_domain=request.source_domain,
            time=request.time,
            data=request.data,
        )
        (sequence,) = self.fan_out([event])
        return eventbus_pb2.PublishResponse(id=request.id, sequence=sequence)

    async def PublishBatch(
        self, request: eventbus_pb2.PublishBatchRequest, context: Context
    ) -> eventbus_pb2.PublishBatchResponse:
        sequences = self.fan_out(request.events)
        return eventbus_pb2.PublishBatchResponse(
            results=[
                eventbus_pb2.PublishResult(id=event.id, sequence=sequence)
                for event, sequence in zip(request.events, sequences, strict=True)
            ]
        )

    async def PublishStream(
        self,
        requests: AsyncIterator[eventbus_pb2.PublishStreamRequest],
        context: Context,
    ) -> AsyncIterator[eventbus_pb2.PublishStreamResponse]:
        async for request in requests:
            sequences = self.fan_out(request.events)
            yield eventbus_pb2.PublishStreamResponse(
                ids=[event.id for event in request.events], sequences=sequences
            )

    async def Subscribe(
        self, request: eventbus_pb2.SubscribeRequest, context: Context
    ) -> AsyncIterator[eventbus_pb2.SubscribeResponse]:
        limit = request.max_batch or 1000
        queue: asyncio.Queue[event_pb2.Event] = asyncio.Queue()
        self.streams.add(queue)
        try:
            while True:
                # Whatever arrived while the last message was being sent goes out as one,
                # as the bus batches a subscriber's backlog.
                batch = [await queue.get()]
                while len(batch) < limit and not queue.empty():
                    batch.append(queue.get_nowait())
                yield eventbus_pb2.SubscribeResponse(events=batch, head_sequence=self.published)
        finally:
            self.streams.discard(queue)

    async def GetStats(
        self, request: eventbus_pb2.GetStatsRequest, context: Context
    ) -> eventbus_pb2.GetStatsResponse:
        return eventbus_pb2.GetStatsResponse(
            published_total=self.published,
            head_sequence=self.published,
            active_streams=len(self.streams),
        )


async def serve(port: int) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ]
    )
    # Only what the benchmark calls is served; the other methods answer UNIMPLEMENTED, as
    # the generated base class does.
    relay = Relay()  # type: ignore[abstract]
    eventbus_pb2_grpc.add_EventBusServiceServicer_to_server(relay, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")  # loopback only: a benchmark's baseline
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    options = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(options.port))


if __name__ == "__main__":
    main()
