"""The supervisor with real child processes: boot gating, failures, restarts and backoff."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from services.guardian.model import State
from services.guardian.supervisor import BootError
from tests.guardian.conftest import (
    component,
    pid_exists,
    port_open,
    state_of,
    supervising,
    topology,
)
from tests.support import ManualClock, eventually, free_ports

pytestmark = pytest.mark.slow


def _events(record: Path) -> dict[str, float]:
    lines = record.read_text().split("\n") if record.exists() else []
    return {f"{n} {what}": float(t) for n, what, t in (line.split() for line in lines if line)}


async def test_a_chunk_starts_only_when_the_previous_chunk_is_serving(tmp_path: Path) -> None:
    record = tmp_path / "record.txt"
    a, b, c = free_ports(3)
    topo = topology(
        {
            "slow": component("slow", a, "--delay", "1.0", "--record", str(record), chunk=0),
            "dep": component("dep", b, "--record", str(record), chunk=1),
            "after_dep": component(
                "after_dep", c, "--record", str(record), chunk=1, depends_on=["dep"]
            ),
        }
    )
    async with supervising(topo, tmp_path) as (supervisor, _):
        await supervisor.boot()
        assert all(s.state == State.SERVING for s in supervisor.statuses())
        seen = _events(record)
        # The next chunk starts after the slow component reported SERVING, and inside a
        # chunk a dependent starts after its dependency is SERVING.
        assert seen["dep started"] >= seen["slow serving"]
        assert seen["after_dep started"] >= seen["dep serving"]
        assert supervisor.system_health().boot_complete


async def test_children_get_their_port_data_dir_and_every_peer_address(tmp_path: Path) -> None:
    a, b = free_ports(2)
    env_file = tmp_path / "two.env.json"
    topo = topology(
        {
            "one": component("one", a),
            "two": component("two", b, "--env-file", str(env_file), env={"X": "y"}),
        }
    )
    async with supervising(topo, tmp_path) as (supervisor, _):
        await supervisor.boot()
        env = json.loads(env_file.read_text())
        assert env["GRACE_TWO_PORT"] == str(b)
        assert env["GRACE_ONE_ADDR"] == f"127.0.0.1:{a}"
        assert env["GRACE_TWO_ADDR"] == f"127.0.0.1:{b}"
        assert env["GRACE_GUARDIAN_ADDR"] == "127.0.0.1:8104"
        assert env["GRACE_DATA_DIR"] == str(tmp_path)
        assert env["X"] == "y"


async def test_a_required_component_that_never_serves_stops_the_boot_naming_it(
    tmp_path: Path,
) -> None:
    a, b, c = free_ports(3)
    topo = topology(
        {
            "fine": component("fine", a, chunk=0),
            "stuck": component("stuck", b, "--never", chunk=1, startup_timeout_s=1.5),
            "never_started": component("never_started", c, chunk=2),
        }
    )
    async with supervising(topo, tmp_path) as (supervisor, _):
        with pytest.raises(BootError) as caught:
            await supervisor.boot()
        message = str(caught.value)
        assert message.startswith("stuck did not come up: not SERVING within 1.5s")
        assert "stuck listening on" in message  # the last lines of its log
        assert state_of(supervisor, "stuck") == State.FAILED
        assert state_of(supervisor, "never_started") == State.PENDING
        assert not port_open(b)


async def test_a_dependent_in_the_same_chunk_is_not_started_when_its_dependency_fails(
    tmp_path: Path,
) -> None:
    # The default topology boots everything after the registry in one chunk, so
    # depends_on alone orders it: a dependency that does not come up must still stop the
    # boot with its own name, and leave what needs it unstarted.
    record = tmp_path / "record.txt"
    a, b, c, d = free_ports(4)
    topo = topology(
        {
            "base": component("base", a, chunk=0),
            "broken": component("broken", b, "--never", "--exit-after", "0.2", chunk=1),
            "needs_broken": component(
                "needs_broken", c, "--record", str(record), chunk=1, depends_on=["broken"]
            ),
            "independent": component("independent", d, "--record", str(record), chunk=1),
        }
    )
    async with supervising(topo, tmp_path) as (supervisor, _):
        with pytest.raises(BootError) as caught:
            await supervisor.boot()
        assert str(caught.value).startswith("broken did not come up: process exited")
        assert supervisor.status("needs_broken").last_error == "dependency broken did not come up"
        assert state_of(supervisor, "needs_broken") == State.FAILED
        assert "needs_broken started" not in _events(record)
        assert "independent serving" in _events(record)
        assert not port_open(c)


async def test_a_can_fail_component_that_exits_is_reported_and_the_boot_goes_on(
    tmp_path: Path,
) -> None:
    a, b = free_ports(2)
    topo = topology(
        {
            "flaky": component("flaky", a, "--never", "--exit-after", "0.2", can_fail=True),
            "next": component("next", b, chunk=1),
        }
    )
    async with supervising(topo, tmp_path) as (supervisor, _):
        await supervisor.boot()
        flaky = supervisor.status("flaky")
        assert flaky.state == State.FAILED
        assert flaky.last_error == "process exited with code 1"
        assert state_of(supervisor, "next") == State.SERVING


async def test_a_killed_component_is_noticed_at_once_and_restarted_to_serving(
    tmp_path: Path,
) -> None:
    (a,) = free_ports(1)
    # A 30 s probe interval: only the exit watcher can notice within 2 s.
    topo = topology({"victim": component("victim", a)}, probe={"interval_s": 30.0})
    async with supervising(topo, tmp_path) as (supervisor, store):
        await supervisor.boot()
        old_pid = supervisor.status("victim").pid
        os.kill(old_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        await eventually(
            lambda: state_of(supervisor, "victim") != State.SERVING, what="the kill noticed"
        )
        assert time.monotonic() - killed_at < 2.0
        await eventually(
            lambda: (
                state_of(supervisor, "victim") == State.SERVING
                and supervisor.status("victim").pid != old_pid
            ),
            what="victim SERVING again",
        )
        victim = supervisor.status("victim")
        assert victim.last_exit_code == -signal.SIGKILL
        assert victim.total_restarts == 1
        await eventually(lambda: port_open(a), what="port open")
        await supervisor.journal.flush()
        kinds = [d.event_type for d in await store.decisions("victim")]
        assert kinds == ["healing.started", "healing.completed"]


async def test_a_crash_loop_ends_failed_after_the_budget_with_doubling_delays(
    tmp_path: Path,
) -> None:
    (a,) = free_ports(1)
    crash_file = tmp_path / "crash"
    topo = topology(
        {"looper": component("looper", a, "--crash-if", str(crash_file))},
        restart={"initial_backoff_s": 0.2, "max_backoff_s": 0.8, "budget": 4},
    )
    async with supervising(topo, tmp_path) as (supervisor, store):
        await supervisor.boot()
        starts: list[float] = []
        crash_file.touch()
        os.kill(supervisor.status("looper").pid, signal.SIGKILL)
        async for change in supervisor.follow(until=_never()):
            if change.snapshot:
                continue
            if change.component.state == State.STARTING:
                starts.append(time.monotonic())
            if change.component.state == State.BACKOFF:
                starts.append(-time.monotonic())  # negative: a backoff began
            if change.component.state == State.FAILED:
                break
        looper = supervisor.status("looper")
        assert looper.state == State.FAILED
        assert looper.restarts == 4
        assert looper.last_error == "process exited with code 3"
        backoffs = [-t for t in starts if t < 0]
        restarts = [t for t in starts if t > 0]
        observed = [
            round(start - began, 2) for began, start in zip(backoffs, restarts, strict=False)
        ]
        expected = [0.2, 0.4, 0.8, 0.8]
        assert len(observed) == 4
        for seen, wanted in zip(observed, expected, strict=True):
            assert wanted <= seen < wanted + 1.0, (observed, expected)
        await supervisor.journal.flush()
        decisions = await store.decisions("looper")
        delays = [d.data["delay_s"] for d in decisions if d.event_type == "healing.started"]
        assert delays == expected
        assert decisions[-1].event_type == "healing.failed"
        # FAILED stays down until asked; a start brings it back once the cause is gone.
        crash_file.unlink()
        assert (await supervisor.start("looper")).state == State.SERVING


async def test_the_restart_count_resets_after_a_long_enough_healthy_run(tmp_path: Path) -> None:
    (a,) = free_ports(1)
    clock = ManualClock()
    topo = topology({"steady": component("steady", a)}, restart={"reset_after_s": 600.0})
    async with supervising(topo, tmp_path, clock=clock) as (supervisor, _):
        await supervisor.boot()
        old_pid = supervisor.status("steady").pid
        os.kill(old_pid, signal.SIGKILL)
        await eventually(
            lambda: (
                state_of(supervisor, "steady") == State.SERVING
                and supervisor.status("steady").pid != old_pid
            ),
            what="steady restarted",
        )
        assert supervisor.status("steady").restarts == 1
        clock.advance(599.0)
        await asyncio.sleep(1.0)  # a few Checks: not yet ten minutes healthy
        assert supervisor.status("steady").restarts == 1
        clock.advance(2.0)
        await eventually(lambda: supervisor.status("steady").restarts == 0, what="reset")
        assert supervisor.status("steady").total_restarts == 1


async def test_a_component_that_turns_unhealthy_is_restarted_after_the_failure_threshold(
    tmp_path: Path,
) -> None:
    (a,) = free_ports(1)
    sick_file = tmp_path / "sick"
    topo = topology({"sickly": component("sickly", a, "--sick-if", str(sick_file))})
    async with supervising(topo, tmp_path) as (supervisor, _):
        await supervisor.boot()
        first_pid = supervisor.status("sickly").pid
        sick_file.touch()
        await eventually(
            lambda: state_of(supervisor, "sickly") == State.NOT_SERVING, what="NOT_SERVING"
        )
        await eventually(
            lambda: supervisor.status("sickly").pid not in (0, first_pid), what="a restart"
        )
        sick_file.unlink()  # the restarted process can come up healthy
        await eventually(
            lambda: (
                state_of(supervisor, "sickly") == State.SERVING
                and supervisor.status("sickly").pid != first_pid
            ),
            what="restarted and SERVING",
        )
        assert "failed health checks" in supervisor.status("sickly").last_error
        assert not pid_exists(first_pid)


async def test_a_command_component_probed_over_http_is_supervised_like_any_other(
    tmp_path: Path,
) -> None:
    (port,) = free_ports(1)
    command = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]
    topo = topology({"web": {"command": command, "port": port, "health_http_path": "/"}})
    async with supervising(topo, tmp_path) as (supervisor, _):
        await supervisor.boot()
        web = supervisor.status("web")
        assert web.state == State.SERVING
        assert web.probe_latency_ms > 0
        os.kill(web.pid, signal.SIGKILL)
        await eventually(
            lambda: (
                state_of(supervisor, "web") == State.SERVING
                and supervisor.status("web").pid not in (0, web.pid)
            ),
            what="web restarted",
        )


async def test_shutdown_stops_components_in_reverse_boot_order(tmp_path: Path) -> None:
    a, b, c = free_ports(3)
    topo = topology(
        {
            "first": component("first", a, chunk=0),
            "second": component("second", b, chunk=1),
            "third": component("third", c, chunk=2),
        }
    )
    async with supervising(topo, tmp_path) as (supervisor, _):
        await supervisor.boot()
        pids = [s.pid for s in supervisor.statuses()]
        stopped: list[str] = []
        until = _never()

        async def collect() -> None:
            async for change in supervisor.follow(until):
                if change.component.state == State.STOPPED:
                    stopped.append(change.component.name)

        watcher = asyncio.create_task(collect())
        await asyncio.sleep(0.1)
        await supervisor.shutdown()
        await eventually(lambda: len(stopped) == 3, what="three stops")
        until.set()
        await watcher
        assert stopped == ["third", "second", "first"]
        assert not any(pid_exists(pid) for pid in pids)
        assert not any(port_open(p) for p in (a, b, c))


async def test_a_component_that_exits_while_guardian_shuts_down_is_not_started_again(
    tmp_path: Path,
) -> None:
    # A signal to Guardian's whole process group or service unit reaches the components
    # too: they exit while the shutdown is still stopping others. That is no crash to heal.
    record = tmp_path / "record.txt"
    a, b = free_ports(2)
    topo = topology(
        {
            "early": component("early", a, "--record", str(record), chunk=0),
            # Stopped first (reverse boot order), and slowly: the shutdown waits on it.
            "late": component("late", b, "--linger", "2.0", "--record", str(record), chunk=1),
        }
    )
    async with supervising(topo, tmp_path) as (supervisor, store):
        await supervisor.boot()
        early_pid = supervisor.status("early").pid
        shutdown = asyncio.create_task(supervisor.shutdown())
        await eventually(lambda: state_of(supervisor, "late") == State.STOPPING, what="STOPPING")
        os.kill(early_pid, signal.SIGTERM)
        await eventually(lambda: not pid_exists(early_pid), what="early gone")
        await shutdown
        starts = [line for line in record.read_text().splitlines() if " started " in line]
        assert sorted(line.split()[0] for line in starts) == ["early", "late"]
        assert state_of(supervisor, "early") == State.STOPPED
        assert supervisor.status("early").total_restarts == 0
        await supervisor.journal.flush()
        assert await store.decisions("early") == []


def _never() -> asyncio.Event:
    return asyncio.Event()
