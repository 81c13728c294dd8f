"""One component's life under Guardian: spawn, follow its health, restart with backoff.

A lifecycle task spawns the process and waits for whichever comes first: the process exits
(noticed at once, the task awaits the child), its Checks fail `failure_threshold` times in a
row after it was SERVING, or it is not SERVING within its start-up timeout. Then it waits out
the backoff and starts it again, until the restart budget is spent and the component is
FAILED. Decisions go to the `Journal`; probe results drive the registry heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.guardian.journal import Journal
from services.guardian.model import ComponentStatus, State
from services.guardian.ports import listening_pids, port_is_free
from services.guardian.probe import HealthProbe, Observation
from services.guardian.process import ChildProcess, Zygote
from services.guardian.registration import Registrar
from services.guardian.topology import Topology

log = logging.getLogger(__name__)


@dataclass
class Managed:
    """A component with what its supervisor keeps about it."""

    status: ComponentStatus
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    process: ChildProcess | None = None
    task: asyncio.Task[None] | None = None
    waiters: list[asyncio.Future[bool]] = field(default_factory=list)
    failures: int = 0
    healing: str = ""


class Lifecycle:
    """Runs components' processes for a supervisor.

    Args:
        topology: Probe, restart and boot settings.
        journal: Where decisions go.
        registrar: Registers components and renews leases from probes; None to skip.
        clock: Epoch seconds.
        set_state: Changes a component's state (the supervisor tells its watchers).
        child_env: The environment of a component's process.
        on_spawn: Called with the component name after each spawn.
        stopping: True once Guardian is shutting down: nothing is started again.
    """

    def __init__(
        self,
        topology: Topology,
        *,
        journal: Journal,
        registrar: Registrar | None,
        clock: Callable[[], float],
        set_state: Callable[[Managed, State], None],
        child_env: Callable[[ComponentStatus], dict[str, str]],
        on_spawn: Callable[[str], None],
        stopping: Callable[[], bool],
    ) -> None:
        self.topology = topology
        self.journal = journal
        self.registrar = registrar
        self.clock = clock
        self._set_state = set_state
        self._child_env = child_env
        self._on_spawn = on_spawn
        self._stopping = stopping
        self.zygote: Zygote | None = None

    async def run(self, managed: Managed, fail_fast: bool) -> None:
        """Runs the component, restarting it with backoff, until FAILED or cancelled.

        With `fail_fast` (the boot), a first run that never reaches SERVING ends FAILED at
        once instead of being retried.
        """
        status = managed.status
        policy = self.topology.restart
        while True:
            reason, ever_serving = await self._run_once(managed)
            status.last_error = reason
            if self._ended_by_shutdown(managed):
                return
            if fail_fast and not ever_serving:
                self._set_state(managed, State.FAILED)
                return
            fail_fast = False
            if status.restarts >= policy.budget:
                # Recorded before the state changes, so whoever sees FAILED finds the event.
                await self.journal.decide(
                    "healing.failed",
                    status.name,
                    playbook="restart_component",
                    reason=reason,
                    restarts=status.restarts,
                    message=f"restart budget of {policy.budget} spent; FAILED until asked",
                )
                self._set_state(managed, State.FAILED)
                return
            delay = policy.delay(status.restarts)
            status.restarts += 1
            status.total_restarts += 1
            managed.healing = "restart_component"
            self._set_state(managed, State.BACKOFF)
            await self.journal.decide(
                "healing.started",
                status.name,
                playbook="restart_component",
                reason=reason,
                attempt=status.restarts,
                delay_s=delay,
            )
            await asyncio.sleep(delay)
            if self._ended_by_shutdown(managed):
                return

    def _ended_by_shutdown(self, managed: Managed) -> bool:
        """True, with the component STOPPED, when Guardian is shutting down.

        A component that exits then is stopping with it, not crashing: a signal to
        Guardian's whole process group or service unit (`kill -- -PGID`, a service
        manager's stop) reaches the components too, and they may exit before Guardian gets
        to them. Starting them again would only make the shutdown stop them twice."""
        if not self._stopping():
            return False
        log.info("%s: not restarted, Guardian is shutting down", managed.status.name)
        self._set_state(managed, State.STOPPED)
        return True

    async def _run_once(self, managed: Managed) -> tuple[str, bool]:
        """Runs one process until it exits or fails its probes; returns why and whether it
        was ever SERVING."""
        status = managed.status
        spec = status.spec
        # A process already on the port would answer the probes in the child's place.
        busy = await self._port_taken(status)
        if busy:
            log.warning("%s: %s", status.name, busy)
            return busy, False
        proc = ChildProcess(
            spec.name,
            spec.argv(),
            self._child_env(status),
            status.log_path,
            module=spec.module,
            zygote=self.zygote,
        )
        managed.process = proc
        managed.failures = 0
        await proc.spawn()
        self._on_spawn(status.name)
        status.pid = proc.pid
        status.started_at = proc.started_at
        log.info("%s started: pid %d, port %d", status.name, proc.pid, status.port)
        await self.journal.spawned(proc, status.name, status.port)
        self._set_state(managed, State.STARTING)
        loop = asyncio.get_running_loop()
        unhealthy: asyncio.Future[str] = loop.create_future()
        ever_serving = False

        def on_observation(obs: Observation) -> None:
            nonlocal ever_serving
            ever_serving = self._observe(managed, obs, unhealthy) or ever_serving

        probe = HealthProbe(
            status.address,
            spec.health_service,
            self.topology.probe,
            on_observation,
            lambda: status.state == State.STARTING,
            spec.health_http_path,
        )
        timeout = spec.startup_timeout_s or self.topology.boot.startup_timeout_s
        tasks = [
            asyncio.create_task(probe.run(), name=f"probe {status.name}"),
            asyncio.create_task(self._startup_deadline(status, timeout, unhealthy)),
        ]
        exited: asyncio.Future[int] = asyncio.ensure_future(proc.wait())
        try:
            waits: list[asyncio.Future[Any]] = [exited, unhealthy]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if not exited.done():
                exited.cancel()
        if self.registrar is not None:
            self.registrar.observed(status.name, False, 0)
        if proc.returncode is None:
            reason = unhealthy.result()
            await proc.stop(self.topology.boot.stop_timeout_s)
        else:
            reason = f"process exited with code {proc.returncode}"
            proc.reap_group()
        status.last_exit_code = proc.returncode or 0
        status.pid = 0
        log.warning("%s: %s", status.name, reason)
        return reason, ever_serving

    async def _port_taken(self, status: ComponentStatus) -> str:
        if await asyncio.to_thread(port_is_free, status.host, status.port):
            return ""
        holders = await asyncio.to_thread(listening_pids, status.port)
        by = f" by pid {', '.join(map(str, sorted(holders)))}" if holders else ""
        return f"port {status.port} is already in use{by} (see the clear_port playbook)"

    async def _startup_deadline(
        self, status: ComponentStatus, seconds: float, unhealthy: asyncio.Future[str]
    ) -> None:
        await asyncio.sleep(seconds)
        if status.state == State.STARTING and not unhealthy.done():
            unhealthy.set_result(f"not SERVING within {seconds:g}s of starting")

    def _observe(self, managed: Managed, obs: Observation, unhealthy: asyncio.Future[str]) -> bool:
        """Applies one probe result; returns True when the component is SERVING."""
        status = managed.status
        now = self.clock()
        status.last_probe_at = obs.at or now
        if obs.from_check:
            status.probe_latency_ms = obs.latency_ms
        probe = self.topology.probe
        if self.registrar is not None:
            self.registrar.observed(
                status.name, obs.serving, 2 * probe.interval_s + probe.timeout_s
            )
        if obs.serving:
            managed.failures = 0
            if status.state != State.SERVING:
                status.serving_since = now
                self._set_state(managed, State.SERVING)
                self._register(status)
                if managed.healing:
                    playbook, managed.healing = managed.healing, ""
                    self.journal.decide_soon(
                        "healing.completed",
                        status.name,
                        playbook=playbook,
                        attempt=status.restarts,
                        pid=status.pid,
                    )
            elif (
                status.restarts
                and now - status.serving_since >= self.topology.restart.reset_after_s
            ):
                log.info(
                    "%s healthy for %.0fs: restart count reset",
                    status.name,
                    now - status.serving_since,
                )
                status.restarts = 0
            return True
        if status.state == State.STARTING:
            return False
        status.last_error = f"health {obs.status}" + (f": {obs.error}" if obs.error else "")
        if status.state == State.SERVING:
            self._set_state(managed, State.NOT_SERVING)
        if obs.from_check:
            managed.failures += 1
            if managed.failures >= probe.failure_threshold and not unhealthy.done():
                unhealthy.set_result(
                    f"{managed.failures} failed health checks ({status.last_error})"
                )
        return False

    def _register(self, status: ComponentStatus) -> None:
        if self.registrar is None or not status.spec.register:
            return
        self.registrar.register(
            status.name,
            status.host,
            status.port,
            status.spec.capabilities,
            {"managed_by": "guardian", "group": status.spec.group, "pid": str(status.pid)},
        )
