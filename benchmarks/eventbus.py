"""Event bus benchmark: throughput, latency and fan-out, against NATS JetStream.

Runs the bus as its own process on loopback (SQLite, WAL, synchronous=FULL: durable) and
drives it from this process:

  (a) PublishBatch (1,000 events per call, several in flight) -> one streaming subscriber:
      events/s from the first publish to the last event received;
  (b) publish -> deliver latency (p50/p99) at a steady 1,000 events/s, one Publish per event;
  (c) the (a) workload with 100 subscribers of distinct patterns, each event matching one;
  (a') as (a) through one PublishStream (1,000 events per message, acks in order, a window
      of IN_FLIGHT messages), as the SDK and the outbox relays publish;
  (b') as (b) through one PublishStream, one event per message.

The bus runs in plaintext (GRACE_INSECURE): the figures are the bus's, not TLS's. For
(b) and (b') it also reports the bus process's CPU per event.

The same client code then runs (a), (b) and (b') against `benchmarks/grpc_relay.py`, the
bus's gRPC API with nothing behind it (no validation, no storage, no durability), in a
process of its own: the floor any bus served by Python gRPC on this machine stands on, so
the bus's own share of each figure can be read off.

When NATS answers on 127.0.0.1:4222, the same run also measures, in the same process:

  - the bus on its JetStream backend (`GRACE_EVENTBUS_BACKEND=nats://127.0.0.1:4222`, a
    stream of its own): (a) and (b) through the bus's gRPC API, exactly as above;
  - raw JetStream with the same client library (nats-py): (a) as async publish of the same
    payloads to a file-backed stream with one pull consumer, (b) at the same rate;

and prints the ratios (target: the JetStream backend >= 0.7x raw JetStream on (a)).
The last line is one JSON object with every figure.

    .venv/bin/python benchmarks/eventbus.py

`--jetstream-ratio` measures only (a) on raw JetStream and on the bus's JetStream backend,
alternating them `--runs` times (default 5) with `--events` per run (default 50,000), and
prints each run's ratio and their median: on a shared machine the ratio of runs made side
by side says more than any absolute figure.

    .venv/bin/python benchmarks/eventbus.py --jetstream-ratio --runs 5
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
from _harness import cpu_seconds
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grace.eventbus.v1 import event_pb2, eventbus_pb2, eventbus_pb2_grpc

T = TypeVar("T")

THROUGHPUT_EVENTS = 200_000
FANOUT_EVENTS = 100_000
BATCH = 1000
IN_FLIGHT = 4
LATENCY_RATE = 1000
LATENCY_SECONDS = 5
SUBSCRIBERS = 100
DATA = struct_pb2.Struct()
DATA.update({"prediction": "positive", "confidence": 0.95, "model": "sentiment-v3"})
PAYLOAD = event_pb2.Event(
    id="x" * 20, event_type="bench.tick", source_domain="ai_domain", data=DATA
).SerializeToString()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def server_process(
    args: list[str], env: dict[str, str] | None = None, pids: list[int] | None = None
) -> AsyncIterator[str]:
    """Runs `python ARGS --port PORT` on a free port until the block ends; yields its
    address once its health service says SERVING."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, "--port", str(port), env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    if pids is not None:
        pids.append(proc.pid)
    try:
        async with grpc.aio.insecure_channel(address) as chan:
            health = health_pb2_grpc.HealthStub(chan)
            for _ in range(300):
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                await asyncio.sleep(0.1)
        yield address
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()  # a stuck stop must not stop the benchmark
            await proc.wait()


def bus_process(
    data_dir: Path, backend: str = "sql", pids: list[int] | None = None
) -> contextlib.AbstractAsyncContextManager[str]:
    """The bus as its own process, in plaintext, not registering anywhere."""
    env = {
        **os.environ,
        "GRACE_REGISTRY_ADDR": "127.0.0.1:9",
        # Plaintext on loopback: the benchmark measures the bus, not TLS.
        "GRACE_INSECURE": "true",
        "GRACE_EVENTBUS_BACKEND": backend,
        "GRACE_EVENTBUS_NATS_STREAM": f"GRACEBUSBENCH{os.getpid()}",
        "GRACE_EVENTBUS_NATS_SUBJECT_PREFIX": f"gracebusbench{os.getpid()}",
    }
    return server_process(["-m", "services.eventbus", "--data-dir", str(data_dir)], env, pids)


def relay_process(pids: list[int]) -> contextlib.AbstractAsyncContextManager[str]:
    """`benchmarks/grpc_relay.py`: the bus's API with nothing behind it."""
    return server_process([str(Path(__file__).with_name("grpc_relay.py"))], None, pids)


async def with_cpu(pid: int, measure: Callable[[], Awaitable[T]]) -> tuple[T, float]:
    """`await measure()` and the CPU seconds process `pid` used meanwhile, per event of a
    latency run (`LATENCY_RATE * LATENCY_SECONDS` events), in microseconds."""
    before = cpu_seconds(pid)
    result = await measure()
    return result, (cpu_seconds(pid) - before) / (LATENCY_RATE * LATENCY_SECONDS) * 1e6


def batches(total: int, types: list[str], prefix: str) -> list[eventbus_pb2.PublishBatchRequest]:
    requests = []
    for start in range(0, total, BATCH):
        requests.append(
            eventbus_pb2.PublishBatchRequest(
                events=[
                    event_pb2.Event(
                        id=f"{prefix}-{start + i}",
                        event_type=types[(start + i) % len(types)],
                        source_domain="ai_domain",
                        data=DATA,
                    )
                    for i in range(min(BATCH, total - start))
                ]
            )
        )
    return requests


async def wait_streams(stub: eventbus_pb2_grpc.EventBusServiceStub, count: int) -> None:
    for _ in range(600):
        if (await stub.GetStats(eventbus_pb2.GetStatsRequest())).active_streams >= count:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{count} streams did not open")


async def grace_throughput(address: str, subscribers: int, total: int) -> float:
    """Events/s from the first publish until every subscriber has its events."""
    types = [f"bench.s{i}.tick" for i in range(subscribers)]
    requests = batches(total, types, f"t{subscribers}")
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(address, options=options) as chan:
        stub = eventbus_pb2_grpc.EventBusServiceStub(chan)
        received = 0
        done = asyncio.Event()

        async def consume(pattern: str) -> None:
            nonlocal received
            async for message in stub.Subscribe(
                eventbus_pb2.SubscribeRequest(pattern=pattern, max_batch=1000)
            ):
                received += len(message.events)
                if received >= total:
                    done.set()

        patterns = (
            ["bench.*"] if subscribers == 1 else [f"bench.s{i}.*" for i in range(subscribers)]
        )
        tasks = [asyncio.create_task(consume(p)) for p in patterns]
        await wait_streams(stub, subscribers)
        queue = list(reversed(requests))
        started = time.perf_counter()

        async def publisher() -> None:
            while queue:
                await stub.PublishBatch(queue.pop())

        await asyncio.gather(*(publisher() for _ in range(IN_FLIGHT)))
        await asyncio.wait_for(done.wait(), 120)
        elapsed = time.perf_counter() - started
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return total / elapsed


async def steady(rate: int, seconds: int, send: Any) -> None:
    """Calls `send(i)` at a steady rate (catching up after a late wake-up)."""
    started = time.perf_counter()
    sent = 0
    pending: set[asyncio.Task[None]] = set()
    while sent < rate * seconds:
        due = min(rate * seconds, int((time.perf_counter() - started) * rate) + 1)
        while sent < due:
            task = asyncio.create_task(send(sent))
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += 1
        await asyncio.sleep(0.001)
    await asyncio.gather(*pending)


def percentiles(samples_ms: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples_ms, n=100)
    return cuts[49], cuts[98]


async def grace_latency(address: str) -> tuple[float, float]:
    total = LATENCY_RATE * LATENCY_SECONDS
    async with grpc.aio.insecure_channel(address) as chan:
        stub = eventbus_pb2_grpc.EventBusServiceStub(chan)
        samples: list[float] = []
        done = asyncio.Event()

        async def consume() -> None:
            async for message in stub.Subscribe(eventbus_pb2.SubscribeRequest(pattern="lat.*")):
                now = time.time_ns()
                samples.extend((now - e.time.ToNanoseconds()) / 1e6 for e in message.events)
                if len(samples) >= total:
                    done.set()

        task = asyncio.create_task(consume())
        await wait_streams(stub, 1)

        async def send(i: int) -> None:
            request = eventbus_pb2.PublishRequest(
                id=f"lat-{i}", event_type="lat.tick", source_domain="ai_domain", data=DATA
            )
            request.time.FromNanoseconds(time.time_ns())
            await stub.Publish(request)

        await steady(LATENCY_RATE, LATENCY_SECONDS, send)
        await asyncio.wait_for(done.wait(), 60)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return percentiles(samples)


async def grace_stream_throughput(address: str, total: int) -> float:
    """(a) through one PublishStream: events/s from the first message until the subscriber
    has every event (and the publisher every ack)."""
    requests = [
        eventbus_pb2.PublishStreamRequest(events=b.events)
        for b in batches(total, ["bench.tick"], "s")
    ]
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    async with grpc.aio.insecure_channel(address, options=options) as chan:
        stub = eventbus_pb2_grpc.EventBusServiceStub(chan)
        received = 0
        done = asyncio.Event()

        async def consume() -> None:
            nonlocal received
            async for message in stub.Subscribe(
                eventbus_pb2.SubscribeRequest(pattern="bench.*", max_batch=1000)
            ):
                received += len(message.events)
                if received >= total:
                    done.set()

        task = asyncio.create_task(consume())
        await wait_streams(stub, 1)
        window = asyncio.Semaphore(IN_FLIGHT)

        async def send() -> AsyncIterator[eventbus_pb2.PublishStreamRequest]:
            for request in requests:
                await window.acquire()
                yield request

        started = time.perf_counter()
        acked = 0
        async for ack in stub.PublishStream(send()):
            acked += len(ack.sequences)
            window.release()
        await asyncio.wait_for(done.wait(), 120)
        elapsed = time.perf_counter() - started
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    if acked != total:
        raise RuntimeError(f"{acked} acks for {total} events")
    return total / elapsed


async def grace_stream_latency(address: str) -> tuple[float, float]:
    """(b) through one PublishStream, one event per message."""
    total = LATENCY_RATE * LATENCY_SECONDS
    async with grpc.aio.insecure_channel(address) as chan:
        stub = eventbus_pb2_grpc.EventBusServiceStub(chan)
        samples: list[float] = []
        done = asyncio.Event()

        async def consume() -> None:
            async for message in stub.Subscribe(eventbus_pb2.SubscribeRequest(pattern="slat.*")):
                now = time.time_ns()
                samples.extend((now - e.time.ToNanoseconds()) / 1e6 for e in message.events)
                if len(samples) >= total:
                    done.set()

        task = asyncio.create_task(consume())
        await wait_streams(stub, 1)
        outgoing: asyncio.Queue[eventbus_pb2.PublishStreamRequest | None] = asyncio.Queue()

        async def requests() -> AsyncIterator[eventbus_pb2.PublishStreamRequest]:
            while (request := await outgoing.get()) is not None:
                yield request

        async def drain_acks() -> None:
            async for _ in stub.PublishStream(requests()):
                pass

        acks = asyncio.create_task(drain_acks())

        async def send(i: int) -> None:
            request = eventbus_pb2.PublishStreamRequest()
            event = request.events.add(
                id=f"slat-{i}", event_type="slat.tick", source_domain="ai_domain", data=DATA
            )
            event.time.FromNanoseconds(time.time_ns())
            outgoing.put_nowait(request)

        await steady(LATENCY_RATE, LATENCY_SECONDS, send)
        await asyncio.wait_for(done.wait(), 60)
        outgoing.put_nowait(None)
        await asyncio.wait_for(acks, 60)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return percentiles(samples)


async def nats_available() -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", 4222), 1)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


RAW_CPU: list[float] = []  # CPU seconds of each raw (a) run, in this process


async def raw_jetstream_throughput(js: Any, stream: str, subject: str, total: int) -> float:
    """(a) on raw JetStream: async publish of `total` events -> one pull consumer."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig

    # AckAll: acknowledging the last message of a fetch acknowledges the whole fetch,
    # the cheapest acknowledgement JetStream offers a durable-storage consumer.
    sub = await js.pull_subscribe(
        f"{subject}.>",
        stream=stream,
        config=ConsumerConfig(ack_policy=AckPolicy.ALL, max_ack_pending=100_000),
    )
    received = 0

    async def consume() -> None:
        nonlocal received
        while received < total:
            with contextlib.suppress(nats.errors.TimeoutError):
                msgs = await sub.fetch(1000, timeout=1)
                received += len(msgs)
                await asyncio.gather(*(m.ack() for m in msgs[-1:]))

    task = asyncio.create_task(consume())
    started = time.perf_counter()
    cpu_started = time.process_time()
    run = os.urandom(4).hex()
    for i in range(total):
        await js.publish_async(f"{subject}.tick", PAYLOAD, headers={"Nats-Msg-Id": f"{run}-{i}"})
    await js.publish_async_completed()
    await asyncio.wait_for(task, 120)
    throughput = total / (time.perf_counter() - started)
    RAW_CPU.append(time.process_time() - cpu_started)
    await sub.unsubscribe()
    return throughput


async def nats_figures() -> dict[str, float] | None:
    try:
        import nats
        from nats.js.api import StreamConfig
    except ImportError:
        print("nats-py is not installed: skipping JetStream (pip install nats-py)")
        return None
    if not await nats_available():
        print("NATS is not answering on 127.0.0.1:4222: skipping JetStream")
        return None
    nc = await nats.connect("nats://127.0.0.1:4222", max_reconnect_attempts=1)
    js = nc.jetstream(publish_async_max_pending=20_000)
    stream = f"GRACEBENCH{os.getpid()}"
    subject = f"gracebench{os.getpid()}"
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{subject}.>"], storage="file"))
    try:
        throughput = await raw_jetstream_throughput(js, stream, subject, THROUGHPUT_EVENTS)

        # (b) latency at a steady rate, one push consumer
        samples: list[float] = []
        done = asyncio.Event()
        total = LATENCY_RATE * LATENCY_SECONDS

        async def on_message(msg: Any) -> None:
            samples.append((time.time_ns() - int(msg.headers["sent"])) / 1e6)
            if len(samples) >= total:
                done.set()

        await js.subscribe(f"{subject}.lat", cb=on_message, manual_ack=False, ordered_consumer=True)

        async def send(i: int) -> None:
            await js.publish(
                f"{subject}.lat",
                PAYLOAD,
                headers={"sent": str(time.time_ns()), "Nats-Msg-Id": f"l-{i}"},
            )

        await steady(LATENCY_RATE, LATENCY_SECONDS, send)
        await asyncio.wait_for(done.wait(), 60)
        p50, p99 = percentiles(samples)
        return {"throughput": throughput, "p50_ms": p50, "p99_ms": p99}
    finally:
        with contextlib.suppress(Exception):
            await js.delete_stream(stream)
        await nc.close()


async def delete_bus_streams(js: Any) -> None:
    """Deletes the bus's event stream, dead-letter stream and counter bucket."""
    stream = f"GRACEBUSBENCH{os.getpid()}"
    for name in (stream, f"{stream}_DEAD", f"KV_{stream}_BUS"):
        with contextlib.suppress(Exception):
            await js.delete_stream(name)


async def backend_figures() -> dict[str, float]:
    """(a) and (b) through the bus on its JetStream backend; its stream is deleted after."""
    import nats

    url = "nats://127.0.0.1:4222"
    try:
        with tempfile.TemporaryDirectory(prefix="grace-bench-js-") as tmp:
            async with bus_process(Path(tmp), url) as address:
                throughput = await grace_throughput(address, 1, THROUGHPUT_EVENTS)
                print(f"bus on JetStream (a): {throughput:,.0f} events/s", flush=True)
            # A fresh process for (b), as for the built-in bus its throughput run is over.
            async with bus_process(Path(tmp), url) as address:
                p50, p99 = await grace_latency(address)
        return {"throughput": throughput, "p50_ms": p50, "p99_ms": p99}
    finally:
        nc = await nats.connect(url)
        await delete_bus_streams(nc.jetstream())
        await nc.close()


async def jetstream_ratio(runs: int, total: int) -> None:
    """(a) on raw JetStream and on the bus's JetStream backend, side by side, `runs` times."""
    import nats
    from nats.js.api import StreamConfig

    if not await nats_available():
        print("NATS is not answering on 127.0.0.1:4222")
        return
    url = "nats://127.0.0.1:4222"
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=20_000)
    stream, subject = f"GRACEBENCH{os.getpid()}", f"gracebench{os.getpid()}"
    ratios, raws, buses, cpu_ratios = [], [], [], []
    try:
        for run in range(runs):
            await js.add_stream(
                StreamConfig(name=stream, subjects=[f"{subject}.>"], storage="file")
            )
            try:
                raw = await raw_jetstream_throughput(js, stream, subject, total)
            finally:
                await js.delete_stream(stream)
            with tempfile.TemporaryDirectory(prefix="grace-bench-js-") as tmp:
                try:
                    pids: list[int] = []
                    async with bus_process(Path(tmp), url, pids) as address:
                        bus_cpu, client_cpu = cpu_seconds(pids[0]), time.process_time()
                        bus = await grace_throughput(address, 1, total)
                        bus_cpu = cpu_seconds(pids[0]) - bus_cpu
                        client_cpu = time.process_time() - client_cpu
                finally:
                    await delete_bus_streams(js)
            raws.append(raw)
            buses.append(bus)
            ratios.append(bus / raw)
            # CPU per event says what throughput would be on an idle machine, where the
            # wall clock of a run on a busy one also counts other people's work.
            raw_us = RAW_CPU[-1] / total * 1e6
            bus_us, client_us = bus_cpu / total * 1e6, client_cpu / total * 1e6
            cpu_ratios.append(raw_us / (bus_us + client_us))
            print(
                f"run {run + 1}: raw JetStream {raw:,.0f} events/s ({raw_us:.0f} us CPU/event), "
                f"bus on JetStream {bus:,.0f} events/s (bus {bus_us:.0f} + client "
                f"{client_us:.0f} us CPU/event), ratio {bus / raw:.2f}x, "
                f"CPU ratio {cpu_ratios[-1]:.2f}x",
                flush=True,
            )
    finally:
        await nc.close()
    print(
        f"median ratio {statistics.median(ratios):.2f}x (target >= 0.7x), CPU per event "
        f"{statistics.median(cpu_ratios):.2f}x, over {runs} runs of {total:,} events; "
        "2-core machine shared with other work"
    )
    print(
        json.dumps(
            {
                "events": total,
                "raw_jetstream_eps": [round(x) for x in raws],
                "backend_jetstream_eps": [round(x) for x in buses],
                "ratios": [round(x, 3) for x in ratios],
                "median_ratio": round(statistics.median(ratios), 3),
                "cpu_ratios": [round(x, 3) for x in cpu_ratios],
                "median_cpu_ratio": round(statistics.median(cpu_ratios), 3),
            }
        )
    )


async def main() -> None:
    if "--jetstream-ratio" in sys.argv:
        args = sys.argv[1:]
        runs = int(args[args.index("--runs") + 1]) if "--runs" in args else 5
        total = int(args[args.index("--events") + 1]) if "--events" in args else 50_000
        await jetstream_ratio(runs, total)
        return
    pids: list[int] = []
    with tempfile.TemporaryDirectory(prefix="grace-bench-") as tmp:
        async with bus_process(Path(tmp), pids=pids) as address:
            throughput = await grace_throughput(address, 1, THROUGHPUT_EVENTS)
            (p50, p99), cpu_us = await with_cpu(pids[-1], lambda: grace_latency(address))
            fanout = await grace_throughput(address, SUBSCRIBERS, FANOUT_EVENTS)
            stream_throughput = await grace_stream_throughput(address, THROUGHPUT_EVENTS)
            (stream_p50, stream_p99), stream_cpu_us = await with_cpu(
                pids[-1], lambda: grace_stream_latency(address)
            )
    print(f"built-in bus (a): {throughput:,.0f} events/s", flush=True)
    print(f"built-in bus (b) p50 / p99: {p50:.2f} / {p99:.2f} ms", flush=True)
    print(f"built-in bus (a') stream: {stream_throughput:,.0f} events/s", flush=True)
    print(f"built-in bus (b') stream p50 / p99: {stream_p50:.2f} / {stream_p99:.2f} ms", flush=True)
    # The same client code against the bus's API with nothing behind it: what gRPC alone
    # costs here, so that the bus's own share of each figure can be read off.
    async with relay_process(pids) as address:
        relay_throughput = await grace_throughput(address, 1, THROUGHPUT_EVENTS)
        (relay_p50, relay_p99), relay_cpu_us = await with_cpu(
            pids[-1], lambda: grace_latency(address)
        )
        (relay_stream_p50, relay_stream_p99), relay_stream_cpu_us = await with_cpu(
            pids[-1], lambda: grace_stream_latency(address)
        )
    print(f"gRPC relay (a): {relay_throughput:,.0f} events/s", flush=True)
    peer = await nats_figures()
    if peer is not None:
        print(f"raw JetStream (a): {peer['throughput']:,.0f} events/s", flush=True)
    backend = await backend_figures() if peer is not None else None

    rows = [
        ("(a) PublishBatch -> 1 stream, events/s", f"{throughput:,.0f}", ">= 100,000"),
        ("(b) latency p50 at 1,000/s, ms", f"{p50:.2f}", ""),
        ("(b) latency p99 at 1,000/s, ms", f"{p99:.2f}", "< 5"),
        (f"(c) {SUBSCRIBERS} distinct subscribers, events/s", f"{fanout:,.0f}", ">= (a) / 2"),
        ("(c) / (a)", f"{fanout / throughput:.2f}x", ">= 0.5x"),
        ("(a') PublishStream -> 1 stream, events/s", f"{stream_throughput:,.0f}", ">= 100,000"),
        ("(a') / (a)", f"{stream_throughput / throughput:.2f}x", ""),
        ("(b') stream latency p50 at 1,000/s, ms", f"{stream_p50:.2f}", ""),
        ("(b') stream latency p99 at 1,000/s, ms", f"{stream_p99:.2f}", "< 5"),
        ("(b') p99 / (b) p99", f"{stream_p99 / p99:.2f}x", ""),
        ("(b) / (b') server CPU per event, us", f"{cpu_us:.0f} / {stream_cpu_us:.0f}", ""),
        ("gRPC relay (a) PublishBatch -> 1 stream, events/s", f"{relay_throughput:,.0f}", ""),
        ("gRPC relay (b) latency p50 / p99, ms", f"{relay_p50:.2f} / {relay_p99:.2f}", ""),
        (
            "gRPC relay (b') stream latency p50 / p99, ms",
            f"{relay_stream_p50:.2f} / {relay_stream_p99:.2f}",
            "",
        ),
        (
            "gRPC relay (b) / (b') server CPU per event, us",
            f"{relay_cpu_us:.0f} / {relay_stream_cpu_us:.0f}",
            "",
        ),
        ("(a) / gRPC relay (a)", f"{throughput / relay_throughput:.2f}x", ""),
    ]
    figures: dict[str, Any] = {
        "throughput_eps": round(throughput),
        "latency_p50_ms": round(p50, 3),
        "latency_p99_ms": round(p99, 3),
        "fanout_100_eps": round(fanout),
        "fanout_ratio": round(fanout / throughput, 3),
        "stream_throughput_eps": round(stream_throughput),
        "stream_vs_batch_ratio": round(stream_throughput / throughput, 3),
        "stream_latency_p50_ms": round(stream_p50, 3),
        "stream_latency_p99_ms": round(stream_p99, 3),
        "stream_vs_unary_p99_ratio": round(stream_p99 / p99, 3),
        "server_cpu_us_per_event": round(cpu_us),
        "stream_server_cpu_us_per_event": round(stream_cpu_us),
        "relay_throughput_eps": round(relay_throughput),
        "relay_latency_p50_ms": round(relay_p50, 3),
        "relay_latency_p99_ms": round(relay_p99, 3),
        "relay_stream_latency_p50_ms": round(relay_stream_p50, 3),
        "relay_stream_latency_p99_ms": round(relay_stream_p99, 3),
        "relay_server_cpu_us_per_event": round(relay_cpu_us),
        "relay_stream_server_cpu_us_per_event": round(relay_stream_cpu_us),
    }
    if peer is not None:
        rows += [
            (
                "JetStream (a) async publish -> 1 consumer, events/s",
                f"{peer['throughput']:,.0f}",
                "",
            ),
            (
                "JetStream (b) latency p50 / p99, ms",
                f"{peer['p50_ms']:.2f} / {peer['p99_ms']:.2f}",
                "",
            ),
            ("Grace (a) / JetStream (a)", f"{throughput / peer['throughput']:.2f}x", ">= 1.0x"),
        ]
        figures["jetstream_throughput_eps"] = round(peer["throughput"])
        figures["jetstream_p50_ms"] = round(peer["p50_ms"], 3)
        figures["jetstream_p99_ms"] = round(peer["p99_ms"], 3)
        figures["ratio_vs_jetstream"] = round(throughput / peer["throughput"], 3)
    if peer is not None and backend is not None:
        ratio = backend["throughput"] / peer["throughput"]
        rows += [
            (
                "Bus on JetStream (a) PublishBatch -> 1 stream, events/s",
                f"{backend['throughput']:,.0f}",
                "",
            ),
            (
                "Bus on JetStream (b) latency p50 / p99, ms",
                f"{backend['p50_ms']:.2f} / {backend['p99_ms']:.2f}",
                "",
            ),
            ("Bus on JetStream (a) / raw JetStream (a)", f"{ratio:.2f}x", ">= 0.7x"),
        ]
        figures["backend_jetstream_throughput_eps"] = round(backend["throughput"])
        figures["backend_jetstream_p50_ms"] = round(backend["p50_ms"], 3)
        figures["backend_jetstream_p99_ms"] = round(backend["p99_ms"], 3)
        figures["backend_vs_raw_jetstream"] = round(ratio, 3)
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>14}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>14}  {target}")
    print("(2-core machine shared with other work; client and bus on loopback, bus durable)")
    print(json.dumps(figures))


if __name__ == "__main__":
    asyncio.run(main())
