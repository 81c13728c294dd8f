"""The fork server: components forked from a warm interpreter behave like exec'd ones."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.guardian.process import ChildProcess, Zygote, pid_alive, process_group
from tests.grace_up import PROJECT_ROOT
from tests.support import eventually

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

PROBE = "tests.guardian.forked_probe"


@pytest.fixture(scope="module")
async def zygote() -> AsyncIterator[Zygote]:
    server = Zygote(["services.registry", PROBE], dict(os.environ))
    await server.start()
    yield server
    await server.close()


def forked(
    zygote: Zygote, tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> ChildProcess:
    return ChildProcess(
        "probe",
        [sys.executable, "-m", PROBE, *args],
        {"PATH": os.environ["PATH"], "GRACE_PROBE": "yes", **(env or {})},
        tmp_path / "logs" / "probe.log",
        cwd=tmp_path,
        module=PROBE,
        zygote=zygote,
    )


async def waiting(proc: ChildProcess) -> None:
    """Until the probe has installed its SIGTERM handler and waits."""
    await eventually(lambda: "probe waiting" in proc.tail(), what="the probe to wait")


async def test_a_forked_component_runs_with_its_own_argv_env_cwd_and_log(
    zygote: Zygote, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    proc = forked(zygote, tmp_path, "--report", str(report), "--code", "0")
    pid = await proc.spawn()
    assert await proc.wait() == 0
    seen = json.loads(report.read_text())
    assert seen["argv"][1:] == ["--report", str(report), "--code", "0"]
    # Its environment is the one given, plus its supervisor for the orphan watch: the
    # zygote, its parent.
    assert seen["env"] == {
        "PATH": os.environ["PATH"],
        "GRACE_PROBE": "yes",
        "GRACE_SUPERVISOR_PID": str(seen["parent"]),
    }
    assert seen["parent"] != os.getpid()
    assert seen["cwd"] == str(tmp_path)
    assert seen["pid"] == pid
    assert seen["session"] == pid  # a session (and process group) of its own
    # What the zygote imported stays out of the child's collections (they would copy it).
    assert seen["frozen_objects"] > 10_000
    # Its loggers already have the level a component sets (setting it again would write
    # to every inherited logger).
    assert seen["root_log_level"] == logging.INFO
    assert "probe says hello" in (tmp_path / "logs" / "probe.log").read_text()


async def test_a_forked_component_finds_the_sqlite_driver_already_imported(
    zygote: Zygote, tmp_path: Path
) -> None:
    # SQLAlchemy imports the driver at a process's first engine: without the storage
    # module importing it, every component would import it again, in its own memory.
    report = tmp_path / "report.json"
    proc = forked(zygote, tmp_path, "--report", str(report), "--imported", "aiosqlite")
    await proc.spawn()
    assert await proc.wait() == 0
    assert json.loads(report.read_text())["imported"] is True


async def test_the_exit_code_and_a_killing_signal_come_back_as_from_an_exec(
    zygote: Zygote, tmp_path: Path
) -> None:
    proc = forked(zygote, tmp_path, "--code", "7")
    await proc.spawn()
    assert await proc.wait() == 7
    sleeper = forked(zygote, tmp_path, "--sleep", "60")
    pid = await sleeper.spawn()
    assert process_group(pid) == pid
    os.kill(pid, signal.SIGKILL)
    assert await sleeper.wait() == -signal.SIGKILL


async def test_stop_sends_sigterm_to_the_group_and_the_component_exits_through_its_handlers(
    zygote: Zygote, tmp_path: Path
) -> None:
    proc = forked(zygote, tmp_path, "--sleep", "60")
    await proc.spawn()
    await waiting(proc)
    assert await proc.stop(timeout_s=10) == 0
    assert "probe stopped cleanly" in (tmp_path / "logs" / "probe.log").read_text()


async def test_a_forked_component_shows_the_command_line_an_exec_would_have(
    zygote: Zygote, tmp_path: Path
) -> None:
    proc = forked(zygote, tmp_path, "--sleep", "60")
    pid = await proc.spawn()
    try:
        await waiting(proc)
        title = (await asyncio.to_thread(Path(f"/proc/{pid}/cmdline").read_bytes)).decode()
        title = title.replace("\0", " ")
        assert title.split() == [sys.executable, "-m", PROBE, "--sleep", "60"]
    finally:
        await proc.stop(timeout_s=10)


async def test_forked_servers_stop_by_themselves_when_the_fork_server_goes_away(
    tmp_path: Path,
) -> None:
    # As when Guardian is killed: the zygote reads the end of its stdin and exits, and the
    # orphaned components notice their supervisor is gone.
    own = Zygote(["services.registry"], dict(os.environ))
    await own.start()
    proc = ChildProcess(
        "registry",
        [sys.executable, "-m", "services.registry"],
        {**os.environ, "GRACE_REGISTRY_PORT": "0", "GRACE_DATA_DIR": str(tmp_path)},
        tmp_path / "registry.log",
        module="services.registry",
        zygote=own,
    )
    pid = await proc.spawn()
    await eventually(lambda: "serving on" in proc.tail(), what="the registry to serve")
    await own.close()
    await eventually(lambda: not pid_alive(pid), within_s=30, what="the orphan to stop")
    assert "supervisor" in proc.tail()


async def test_the_fork_server_leaves_stop_signals_to_guardian(tmp_path: Path) -> None:
    # It shares Guardian's process group, so a Ctrl-C or a `kill -- -PGID` reaches it:
    # exiting then would orphan every component while Guardian is still stopping them.
    own = Zygote([PROBE], dict(os.environ))
    await own.start()
    try:
        proc = forked(own, tmp_path, "--sleep", "60")
        pid = await proc.spawn()
        await waiting(proc)
        server_pid = own.pid
        assert server_pid is not None
        os.kill(server_pid, signal.SIGTERM)
        os.kill(server_pid, signal.SIGINT)
        await asyncio.sleep(0.5)
        assert pid_alive(server_pid)
        assert pid_alive(pid)
        assert await proc.stop(timeout_s=10) == 0  # and it still reports its children
    finally:
        await own.close()


async def test_without_a_running_fork_server_the_component_is_started_with_exec(
    tmp_path: Path,
) -> None:
    stopped = Zygote([], dict(os.environ))  # never started
    report = tmp_path / "report.json"
    proc = forked(stopped, tmp_path, "--report", str(report), "--code", "3")
    proc.env["PYTHONPATH"] = str(PROJECT_ROOT)
    await proc.spawn()
    assert await proc.wait() == 3
    assert json.loads(report.read_text())["parent"] == os.getpid()
    assert "guardian starts probe" in (tmp_path / "logs" / "probe.log").read_text()


async def test_the_fork_server_is_ready_after_the_first_module_and_imports_the_rest_unasked(
    tmp_path: Path,
) -> None:
    # Ready before the second module is imported (its import waits for the gate), so the
    # first chunk boots meanwhile; then, with no request, the zygote imports it itself.
    gate, mark = tmp_path / "gate", tmp_path / "mark"
    env = {
        **os.environ,
        "GRACE_TEST_IMPORT_GATE": str(gate),
        "GRACE_TEST_IMPORT_MARK": str(mark),
    }
    server = Zygote(["services.registry", "tests.guardian.gated_import"], env)
    try:
        await server.start()
        assert not mark.exists()
        gate.touch()
        await eventually(mark.exists, what="the zygote to import the second module")
        assert server._proc is not None
        assert mark.read_text() == str(server._proc.pid)
    finally:
        await server.close()


def test_a_fork_server_forked_from_guardians_process_runs_components_like_an_execd_one(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.guardian.early_fork_driver", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # One line: the components' ends unwound to their own exits, not into the driver's code.
    (line,) = result.stdout.splitlines()
    seen = json.loads(line)
    # The fork server shares what its parent imported (the driver's own module included),
    # and shows the command line of an exec'd one.
    assert seen["report"]["imported"] is True
    assert seen["report"]["parent"] == seen["fork_server"] != seen["driver"]
    assert seen["fork_server_title"].split("\0")[0].split()[1:] == [
        "-m",
        "services.guardian.zygote",
        "tests.guardian.forked_probe",
    ]
    # Exit codes, a SIGTERM stop and the interpreter's normal shutdown as with exec.
    assert seen["code"] == 3
    assert seen["stopped_code"] == 0
    assert seen["log"].count("probe atexit ran") == 2
    assert "probe stopped cleanly" in seen["log"]
    assert seen["fork_server_code"] == 0
