"""The `grace` command end to end, as users run it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from services.cli import cli
from services.cli.up import parse_up_flags
from services.guardian.topology import load_topology
from tests.guardian.conftest import pid_exists, port_open
from tests.support import free_ports, own_pki_env

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _grace(
    *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=PROJECT_ROOT,
        check=False,
        env=own_pki_env() if env is None else env,
    )


def test_every_command_is_registered() -> None:
    for name in ("up", "down", "status", "heal", "restart", "logs", "verify-proof", "log"):
        assert name in cli.commands
    args = parse_up_flags(["--with-examples", "--config", "x.toml"])
    assert args.with_examples
    assert args.config == "x.toml"


def test_status_without_a_running_guardian_exits_2_and_says_so() -> None:
    (port,) = free_ports(1)
    result = _grace("status", "--guardian", f"127.0.0.1:{port}", timeout=30)
    assert result.returncode == 2
    assert "no Guardian answers" in result.stderr


def test_up_with_an_invalid_topology_fails_before_starting_anything(tmp_path: Path) -> None:
    config = tmp_path / "grace.toml"
    config.write_text("[components.registry]\nport = 8102\nrestart_policy = 'always'\n")
    result = _grace("up", "--config", str(config), "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 2
    assert "unknown key 'restart_policy'" in result.stderr
    assert not (tmp_path / "data").exists()


def test_up_with_a_bad_memory_release_interval_fails_before_starting_anything(
    tmp_path: Path,
) -> None:
    env = {**own_pki_env(), "GRACE_RELEASE_MEMORY_EVERY_S": "often"}
    result = _grace("up", "--data-dir", str(tmp_path / "data"), env=env)
    assert result.returncode == 2
    assert "GRACE_RELEASE_MEMORY_EVERY_S must be a number of seconds" in result.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
async def test_grace_up_boots_the_default_topology_and_sigint_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    names = [c.name for c in load_topology(None).components]
    *component_ports, guardian_port = free_ports(len(names) + 1)
    ports = dict(zip(names, component_ports, strict=True))
    registry_port = ports["registry"]
    # The default topology, every component moved to a free port so the test never
    # collides with a running Grace.
    config = tmp_path / "grace.toml"
    config.write_text(
        "".join(f"[components.{name}]\nport = {port}\n" for name, port in ports.items())
        + "[probe]\ninterval_s = 0.5\n[registration]\nlease_ttl_s = 3\n"
    )
    data_dir = tmp_path / "data"
    proc = await _start_up(config, data_dir, guardian_port)
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        while not any(line.startswith("Grace is up") for line in seen):
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line, f"grace up ended early: {seen}"
            seen.append(line.decode().strip())
        assert any(line.startswith("COMPONENT") for line in seen)
        table_row = next(line for line in seen if line.startswith("registry "))
        assert table_row.split()[1:4:2] == [str(registry_port), "SERVING"]
        registry_pid = int(table_row.split()[2])

        status = await asyncio.to_thread(
            _grace,
            "status",
            "-o",
            "table",
            "--guardian",
            f"127.0.0.1:{guardian_port}",
            "--data-dir",
            str(data_dir),
        )
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"system: SERVING ({len(names)}/{len(names)} SERVING)" in status.stdout
        assert (data_dir / "logs" / "registry.log").exists()

        target = (
            "-o",
            "table",
            "--guardian",
            f"127.0.0.1:{guardian_port}",
            "--data-dir",
            str(data_dir),
        )
        diagnosis = await asyncio.to_thread(
            _grace, "heal", "registry", "--playbook", "diagnose_network", *target
        )
        assert diagnosis.returncode == 0, diagnosis.stdout + diagnosis.stderr
        assert "[ok  ] health: SERVING" in diagnosis.stdout
        restart = await asyncio.to_thread(_grace, "restart", "registry", *target)
        assert restart.returncode == 0, restart.stdout + restart.stderr
        assert restart.stdout.startswith("registry: SERVING")
        registry_pid = int(restart.stdout.split("(pid ")[1].split(",")[0])
        assert (data_dir / "logs" / "guardian.log").exists()

        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 60)
        rest = (await proc.stdout.read()).decode()
        assert code == 0, rest
        assert "stopping Grace" in rest
        assert "registry: STOPPING -> STOPPED" in rest
        assert not pid_exists(registry_pid)
        for port in [*component_ports, guardian_port]:
            assert not port_open(port)
    finally:
        if proc.returncode is None:
            # Kill the whole group: grace up and every component it started.
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def _start_up(config: Path, data_dir: Path, guardian_port: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "up",
        "--config",
        str(config),
        "--data-dir",
        str(data_dir),
        "--port",
        str(guardian_port),
        cwd=PROJECT_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        env=own_pki_env(),
    )


def _test_component_toml(name: str, port: int, *args: str, timeout_s: float) -> str:
    argv = ", ".join(f'"{a}"' for a in ["--name", name, *args])
    # Only the test component runs: every default component is switched off.
    defaults = "".join(
        f"[components.{c.name}]\nenabled = false\n" for c in load_topology(None).components
    )
    return (
        defaults + f'[components.{name}]\nmodule = "tests.guardian.component"\nport = {port}\n'
        f"args = [{argv}]\nstartup_timeout_s = {timeout_s}\n"
    )


@pytest.mark.slow
async def test_sigint_during_the_boot_stops_what_was_started_and_exits_0(tmp_path: Path) -> None:
    port, guardian_port = free_ports(2)
    config = tmp_path / "grace.toml"
    config.write_text(_test_component_toml("slowpoke", port, "--delay", "120", timeout_s=300))
    proc = await _start_up(config, tmp_path / "data", guardian_port)
    assert proc.stdout is not None
    try:
        line = ""
        while "slowpoke: PENDING -> STARTING" not in line:
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            assert line, "grace up ended early"
        child_pid = int(line.split("(pid ")[1].split(",")[0])
        await asyncio.sleep(0.3)  # let the child bind
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        assert not pid_exists(child_pid)
        assert not port_open(port)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.slow
async def test_a_required_component_that_never_serves_fails_the_boot_with_its_log(
    tmp_path: Path,
) -> None:
    port, guardian_port = free_ports(2)
    config = tmp_path / "grace.toml"
    config.write_text(_test_component_toml("stuck", port, "--never", timeout_s=1.5))
    proc = await _start_up(config, tmp_path / "data", guardian_port)
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 1
        text = stderr.decode()
        assert "stuck did not come up: not SERVING within 1.5s of starting" in text
        assert f"stuck listening on {port}" in text  # the last lines of its log
        assert not port_open(port)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
