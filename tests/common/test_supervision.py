"""A component started by a supervisor shuts down when the supervisor dies."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from services.common.supervision import SUPERVISOR_PID_ENV, watch_supervisor


async def test_no_supervisor_named_means_no_watch() -> None:
    called: list[bool] = []
    await asyncio.wait_for(watch_supervisor({}, lambda: called.append(True)), 1)
    assert called == []


async def test_a_changed_parent_triggers_shutdown_once() -> None:
    called: list[bool] = []
    not_my_parent = {SUPERVISOR_PID_ENV: str(os.getppid() + 100_000)}
    await asyncio.wait_for(watch_supervisor(not_my_parent, lambda: called.append(True)), 1)
    assert called == [True]


@pytest.mark.slow
async def test_a_server_whose_supervisor_is_killed_exits_by_itself(tmp_path: Path) -> None:
    # A shell stands in for Guardian: it starts the registry as its child, then is killed.
    script = (
        f'GRACE_SUPERVISOR_PID=$$ GRACE_DATA_DIR="{tmp_path}" GRACE_REGISTRY_PORT=0 '
        f'"{sys.executable}" -m services.registry 2>"{tmp_path}/log" & echo $! ; wait'
    )
    shell = await asyncio.create_subprocess_exec(
        "/bin/sh", "-c", script, stdout=asyncio.subprocess.PIPE
    )
    assert shell.stdout is not None
    child = int((await asyncio.wait_for(shell.stdout.readline(), 10)).decode())
    log = tmp_path / "log"
    for _ in range(400):
        if log.exists() and "serving on" in log.read_text(errors="replace"):
            break
        await asyncio.sleep(0.05)
    shell.send_signal(signal.SIGKILL)
    await shell.wait()
    for _ in range(200):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the orphaned registry kept running")
    assert "supervisor" in (tmp_path / "log").read_text()
