"""A Grace server process exports spans when, and only when, the OTEL variables ask it to."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.channels import channel
from tests.support import free_port
from tests.tracing.otlp_receiver import OtlpReceiver, exporter_env

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    collector = OtlpReceiver()
    await collector.start()
    yield collector
    await collector.stop()


async def _run_registry(
    tmp_path: Path, extra_env: dict[str, str]
) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update({"GRACE_DATA_DIR": str(tmp_path), "GRACE_REGISTRY_PORT": str(port), **extra_env})
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.registry",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    address = f"127.0.0.1:{port}"
    async with channel(address) as chan:
        health = health_pb2_grpc.HealthStub(chan)
        for _ in range(300):
            try:
                if (await health.Check(health_pb2.HealthCheckRequest(), timeout=1)).status == 1:
                    return process, address
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.05)
    process.kill()
    raise AssertionError("registry did not start")


async def _stop(process: asyncio.subprocess.Process) -> str:
    process.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(process.communicate(), 30)
    return err.decode()


@pytest.mark.slow
async def test_server_spans_join_the_callers_trace(tmp_path: Path, receiver: OtlpReceiver) -> None:
    process, address = await _run_registry(tmp_path, exporter_env(receiver.endpoint))
    try:
        async with channel(address) as chan:
            stub = registry_pb2_grpc.RegistryServiceStub(chan)
            await stub.GetRegistryStats(
                registry_pb2.GetRegistryStatsRequest(),
                metadata=[("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01")],
            )
        spans = await receiver.wait_for(
            lambda spans: any(s.name.endswith("GetRegistryStats") for s in spans)
        )
    finally:
        await _stop(process)
    [span] = [s for s in spans if s.name.endswith("GetRegistryStats")]
    assert span.service == "registry"
    assert (span.trace_id, span.parent_span_id) == (TRACE_ID, PARENT_ID)
    assert not any("Health" in s.name for s in spans), "health probes must not be traced"


@pytest.mark.slow
async def test_nothing_is_exported_without_the_variables(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    process, address = await _run_registry(tmp_path, {})
    try:
        async with channel(address) as chan:
            stub = registry_pb2_grpc.RegistryServiceStub(chan)
            await stub.GetRegistryStats(registry_pb2.GetRegistryStatsRequest())
    finally:
        log = await _stop(process)
    await asyncio.sleep(0.5)
    assert receiver.spans == []
    assert "Traceback" not in log


@pytest.mark.slow
async def test_an_immutable_log_append_joins_the_trace_of_its_caller(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    from grace.kernels.immutable_log.v1 import immutable_log_pb2 as log_pb2
    from grace.kernels.immutable_log.v1 import immutable_log_pb2_grpc as log_grpc

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        {
            "GRACE_DATA_DIR": str(tmp_path),
            "GRACE_IMMUTABLE_LOG_PORT": str(port),
            "GRACE_IMMUTABLE_LOG_REGISTER": "false",
            "GRACE_IMMUTABLE_LOG_SUBSCRIBE": "false",
            **exporter_env(receiver.endpoint),
        }
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.kernels.immutable_log",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with channel(f"127.0.0.1:{port}") as chan:
            health = health_pb2_grpc.HealthStub(chan)
            for _ in range(300):
                try:
                    status = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if status.status == 1:
                        break
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.05)
            await log_grpc.ImmutableLogServiceStub(chan).Append(
                log_pb2.AppendRequest(entry=log_pb2.NewEntry(kind="audit.test", actor="tester")),
                metadata=[("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01")],
            )
        spans = await receiver.wait_for(
            lambda spans: any(s.name == "immutable_log.commit" for s in spans)
        )
    finally:
        await _stop(process)
    [commit] = [s for s in spans if s.name == "immutable_log.commit"]
    [append] = [s for s in spans if s.name.endswith("ImmutableLogService/Append")]
    assert commit.trace_id == TRACE_ID
    assert commit.parent_span_id == append.span_id
    assert commit.attributes["grace.log.entries"] == 1
