"""An SDK domain killed (kill -9) in the middle of a call, then started again."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grace.domain.v1 import domain_pb2 as pb
from grace.domain.v1 import domain_pb2_grpc
from services.common.channels import channel
from tests.support import ISOLATED_PEERS, free_port

pytestmark = pytest.mark.slow


def start_crash_domain(port: int, data_dir: Path, registry: str = "off") -> subprocess.Popen[bytes]:
    """Runs `tests.sdk.crash_domain` on `port`, registering with `registry` unless "off".

    Its output goes to `crash_domain.log` in `data_dir` (appended across restarts), so a
    test that fails because the domain did not come up can say why.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        **ISOLATED_PEERS,
        "GRACE_REGISTRY_ADDR": registry,
        "GRACE_EVENTBUS_ADDR": "off",
        "GRACE_MEMORY_ADDR": "off",
        "GRACE_TRUST_ADDR": "off",
        "GRACE_IMMUNE_ADDR": "off",
        "GRACE_DATA_DIR": str(data_dir),
        "GRACE_CRASH_DOMAIN_PORT": str(port),
        "GRACE_CRASH_DOMAIN_HOST": "127.0.0.1",
    }
    with (data_dir / "crash_domain.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.sdk.crash_domain"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _log(data_dir: Path) -> str:
    path = data_dir / "crash_domain.log"
    return path.read_text(errors="replace")[-4000:] if path.exists() else "(no output)"


async def _until(
    check: Callable[[], object],
    process: subprocess.Popen[bytes],
    data_dir: Path,
    call: asyncio.Task[object] | None = None,
    within: float = 60.0,
) -> None:
    """Waits for `check`, failing at once (with the domain's output) if the domain exits
    or the call ends first: either means the condition can no longer come true."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        holds = check()
        if await holds if inspect.isawaitable(holds) else holds:
            return
        if process.poll() is not None:
            pytest.fail(f"the domain exited ({process.returncode}):\n{_log(data_dir)}")
        if call is not None and call.done():
            pytest.fail(f"the call ended first: {call.exception()!r}\n{_log(data_dir)}")
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"condition not reached in time\n{_log(data_dir)}")
        await asyncio.sleep(0.05)


async def _serving(
    chan: grpc.aio.Channel, process: subprocess.Popen[bytes], data_dir: Path
) -> None:
    """Waits until the domain reports SERVING. Until then its server answers calls with
    UNAVAILABLE ("starting"), which `wait_for_ready` does not retry."""
    health = health_pb2_grpc.HealthStub(chan)

    async def serving() -> bool:
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.aio.AioRpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    await _until(serving, process, data_dir)


async def test_a_call_interrupted_by_kill_9_is_not_run_again_after_the_restart(
    tmp_path: Path,
) -> None:
    port = free_port()
    starts = tmp_path / "hang.starts"
    request = pb.ExecuteRequest(action="hang", idempotency_key="ex_1/step_1", attempt=1)
    process = start_crash_domain(port, tmp_path)
    try:
        async with channel(f"127.0.0.1:{port}", fast_reconnect=True) as chan:
            stub = domain_pb2_grpc.DomainServiceStub(chan)
            await _serving(chan, process, tmp_path)

            async def call() -> object:
                return await stub.Execute(request, timeout=60, wait_for_ready=True)

            first = asyncio.create_task(call())
            await _until(lambda: starts.exists() and starts.read_text(), process, tmp_path, first)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            with pytest.raises(grpc.aio.AioRpcError):
                await first
            process = start_crash_domain(port, tmp_path)
            await _serving(chan, process, tmp_path)
            request.attempt = 2
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.Execute(request, timeout=30, wait_for_ready=True)
            other = pb.ExecuteRequest(action="hang", idempotency_key="ex_2/step_1")
            with pytest.raises(grpc.aio.AioRpcError) as deadline:
                await stub.Execute(other, timeout=1)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "interrupted" in (raised.value.details() or "")
    # The body started once for the interrupted key; another key still runs normally.
    assert deadline.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert starts.read_text().splitlines() == ["ex_1/step_1", "ex_2/step_1"]


async def test_an_action_declared_safe_runs_again_after_a_kill_9(tmp_path: Path) -> None:
    port = free_port()
    starts = tmp_path / "resume.starts"
    request = pb.ExecuteRequest(action="resume", idempotency_key="ex_1/step_1", attempt=1)
    process = start_crash_domain(port, tmp_path)
    try:
        async with channel(f"127.0.0.1:{port}", fast_reconnect=True) as chan:
            stub = domain_pb2_grpc.DomainServiceStub(chan)
            await _serving(chan, process, tmp_path)

            async def call() -> object:
                return await stub.Execute(request, timeout=60, wait_for_ready=True)

            first = asyncio.create_task(call())
            await _until(starts.exists, process, tmp_path, first)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            with pytest.raises(grpc.aio.AioRpcError):
                await first
            process = start_crash_domain(port, tmp_path)
            await _serving(chan, process, tmp_path)
            again = await stub.Execute(request, timeout=30, wait_for_ready=True)
            replay = await stub.Execute(request, timeout=30, wait_for_ready=True)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert dict(again.output) == {"starts": 2.0}
    assert replay.replayed
    assert starts.read_text().splitlines() == ["ex_1/step_1", "ex_1/step_1"]
