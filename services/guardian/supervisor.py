"""The supervisor: boots components chunk by chunk, runs commands on them, and tells
watchers about every state change.

Each running component has one lifecycle task (see `lifecycle`). Commands (start, stop,
restart, heal) take the component's lock, so they never interleave; shutdown stops the
components in reverse boot order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

from services.common.completion import runs_to_completion
from services.common.errors import NotFound, Unavailable
from services.guardian.credentials import Credentials
from services.guardian.journal import Journal
from services.guardian.lifecycle import Lifecycle, Managed
from services.guardian.model import (
    ComponentStatus,
    State,
    StateChange,
    SystemHealth,
    summarize,
)
from services.guardian.process import ChildProcess, Zygote, child_environment, fork_server_for
from services.guardian.registration import Registrar
from services.guardian.topology import ComponentSpec, Topology

log = logging.getLogger(__name__)

_WATCH_QUEUE_LIMIT = 10_000


class BootError(RuntimeError):
    """A required component did not come up; the message names it and quotes its log."""

    def __init__(self, component: str, reason: str, log_path: Path, log_tail: str) -> None:
        text = f"{component} did not come up: {reason}"
        if log_tail:
            text += f"\n--- last lines of {log_path} ---\n{log_tail}"
        super().__init__(text)
        self.component = component
        self.reason = reason


class Supervisor:
    """Runs the components of a topology.

    Args:
        topology: What to run.
        data_dir: GRACE_DATA_DIR of the children; logs go to `<data_dir>/logs/`.
        host: Interface the components bind and are dialled on.
        base_env: Environment the children inherit (Guardian's own).
        guardian_address: Guardian's `host:port`, given to children as GRACE_GUARDIAN_ADDR.
        journal: Where decisions are logged and recorded.
        registrar: Registers components in the registry; None to skip.
        credentials: Issues each child's certificate (secure mode); None for plaintext.
        clock: Epoch seconds.
        zygote: A fork server launched early (`fork_server_for`), which the boot adopts;
            None to start one at the boot when the topology asks for it.
    """

    def __init__(
        self,
        topology: Topology,
        *,
        data_dir: Path,
        host: str,
        base_env: Mapping[str, str],
        guardian_address: str,
        journal: Journal,
        registrar: Registrar | None = None,
        credentials: Credentials | None = None,
        clock: Callable[[], float] = time.time,
        zygote: Zygote | None = None,
    ) -> None:
        self.topology = topology
        self.data_dir = data_dir
        self.host = host
        self.base_env = dict(base_env)
        self.guardian_address = guardian_address
        self.journal = journal
        self.registrar = registrar
        self.credentials = credentials
        self.clock = clock
        self.started_at = clock()
        self.boot_complete = False
        self.stopping = False
        self._start_order: list[str] = []
        self._lifecycle = Lifecycle(
            topology,
            journal=journal,
            registrar=registrar,
            clock=clock,
            set_state=self._set_state,
            child_env=self._child_env,
            on_spawn=self._spawned,
            stopping=lambda: self.stopping,
        )
        self._early_zygote = zygote
        self._watchers: set[asyncio.Queue[StateChange]] = set()
        self._components: dict[str, Managed] = {
            spec.name: Managed(
                ComponentStatus(
                    spec=spec,
                    host=host,
                    port=spec.port,
                    log_path=data_dir / "logs" / f"{spec.name}.log",
                    state_since=self.started_at,
                )
            )
            for spec in topology.components
        }

    # ---- queries ---------------------------------------------------------------------

    def names(self) -> list[str]:
        """Component names in boot order."""
        return list(self._components)

    def status(self, name: str) -> ComponentStatus:
        """A snapshot of one component; NotFound for an unknown name."""
        return self._managed(name).status.snapshot()

    def statuses(self) -> list[ComponentStatus]:
        """Snapshots of every component in boot order."""
        return [m.status.snapshot() for m in self._components.values()]

    def process(self, name: str) -> ChildProcess | None:
        """The running process of a component, if any."""
        managed = self._managed(name)
        proc = managed.process
        return proc if proc is not None and proc.returncode is None else None

    def lock(self, name: str) -> asyncio.Lock:
        """The lock commands on a component hold."""
        return self._managed(name).lock

    async def follow(self, until: asyncio.Event) -> AsyncIterator[StateChange]:
        """A snapshot of every component (`snapshot` set), then every state change, until
        `until` is set or the caller stops iterating."""
        queue: asyncio.Queue[StateChange] = asyncio.Queue(_WATCH_QUEUE_LIMIT)
        self._watchers.add(queue)
        ended = asyncio.ensure_future(until.wait())
        try:
            for managed in self._components.values():
                yield StateChange(managed.status.snapshot(), None, snapshot=True)
            while not until.is_set():
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait({getter, ended}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    return
                yield getter.result()
        finally:
            ended.cancel()
            self._watchers.discard(queue)

    def system_health(self) -> SystemHealth:
        """The whole system at a glance."""
        return summarize(
            [m.status for m in self._components.values()],
            boot_complete=self.boot_complete,
            stopping=self.stopping,
            started_at=self.started_at,
        )

    # ---- boot and shutdown -----------------------------------------------------------

    async def boot(self) -> None:
        """Starts the chunks in order, each once the previous one is up.

        Raises:
            BootError: A required component did not come up (the caller shuts down).
        """
        if self.topology.boot.fork_server and self._lifecycle.zygote is None:
            await self._start_fork_server()
        for chunk in self.topology.chunks():
            names = [spec.name for spec in chunk]
            log.info("booting chunk %g: %s", chunk[0].chunk, ", ".join(names))
            results = await asyncio.gather(*(self._boot_one(spec, chunk) for spec in chunk))
            for spec, up in zip(chunk, results, strict=True):
                if up:
                    continue
                status = self._components[spec.name].status
                if spec.can_fail:
                    log.warning(
                        "%s did not come up (%s); it may fail, boot goes on",
                        spec.name,
                        status.last_error,
                    )
                    continue
                tail = self._components[spec.name].process
                raise BootError(
                    spec.name,
                    status.last_error,
                    status.log_path,
                    tail.tail() if tail is not None else "",
                )
        self.boot_complete = True
        log.info("boot complete: %d components", len(self._components))

    async def _start_fork_server(self) -> None:
        zygote, self._early_zygote = self._early_zygote, None
        if zygote is None:
            zygote = fork_server_for(self.topology, self.base_env)
        if zygote is None:
            return
        # While the zygote imports (in its own process), issue every component's
        # credentials: the chunks then fork without waiting on key and certificate work.
        self._issue_credentials()
        try:
            await zygote.start()
        except (OSError, TimeoutError, ValueError) as exc:
            log.warning("fork server unavailable (%s); components start with exec", exc)
            await zygote.close()
            return
        self._lifecycle.zygote = zygote
        log.info("fork server ready")

    def _issue_credentials(self) -> None:
        if self.credentials is None:
            return
        gateway = self._components.get("gateway")
        for managed in self._components.values():
            spec = managed.status.spec
            self.credentials.issue_ahead(
                spec.name, spec.identity, gateway.status.address if gateway else None
            )

    async def _boot_one(self, spec: ComponentSpec, chunk: list[ComponentSpec]) -> bool:
        in_chunk = {s.name for s in chunk}
        for dep in spec.depends_on:
            if dep in in_chunk and not await self._wait_ready(
                self._components[dep], pending_ok=True
            ):
                managed = self._components[spec.name]
                managed.status.last_error = f"dependency {dep} did not come up"
                self._set_state(managed, State.FAILED)
                return False
        managed = self._components[spec.name]
        async with managed.lock:
            self._launch(managed, fail_fast=True)
        return await self._wait_ready(managed)

    def begin_shutdown(self) -> None:
        """From now on nothing is started again: not a component that exits, nor one a
        restart or a heal under way has stopped (it stays STOPPED). Guardian says so as
        its shutdown begins, before it waits for the operations in flight: a heal that
        would start its component again would only make that wait longer (a `clear_port`
        can take most of a minute) and the shutdown stop it once more."""
        self.stopping = True

    async def shutdown(self) -> None:
        """Stops every component in reverse boot order, each gracefully."""
        self.begin_shutdown()
        started = [n for n in self._start_order if n in self._components]
        rest = [n for n in self._components if n not in started]
        for name in [*reversed(started), *rest]:
            await self.stop(name, deregister=False)
        for zygote in (self._lifecycle.zygote, self._early_zygote):
            if zygote is not None:
                await zygote.close()
        self._lifecycle.zygote = self._early_zygote = None
        log.info("all components stopped")

    # ---- commands --------------------------------------------------------------------

    async def start(self, name: str, *, wait: bool = True) -> ComponentStatus:
        """Starts a component that is not running (resets its restart count)."""
        managed = self._managed(name)
        async with managed.lock:  # the shutdown may begin while this waits for the lock
            self._refuse_while_stopping()
            if managed.task is None or managed.task.done():
                managed.status.restarts = 0
                self._launch(managed, fail_fast=False)
        if wait:
            await self._wait_ready(managed, self._start_wait_s(managed))
        return managed.status.snapshot()

    async def stop(self, name: str, *, deregister: bool = True) -> ComponentStatus:
        """Stops a component; it stays STOPPED until started again."""
        managed = self._managed(name)
        await self._stop(managed, deregister)
        return managed.status.snapshot()

    async def restart(self, name: str, *, wait: bool = True) -> ComponentStatus:
        """Stops (if running) and starts a component; resets its restart count."""
        managed = self._managed(name)
        self._refuse_while_stopping()
        await self._relaunch(managed)
        if wait:
            await self._wait_ready(managed, self._start_wait_s(managed))
        return managed.status.snapshot()

    async def ready(self, name: str) -> ComponentStatus:
        """Waits until a started component is SERVING, or FAILED or STOPPED, at most its
        start-up time; returns its status then."""
        managed = self._managed(name)
        await self._wait_ready(managed, self._start_wait_s(managed))
        return managed.status.snapshot()

    # A stop waits for the process to exit, seconds at most: a caller that goes away
    # meanwhile (an RPC's deadline) must not leave the component STOPPING, or a restart
    # stopped and never launched again. So both run to their end (the wait for SERVING
    # after a launch is only a wait, and stays with the caller).

    @runs_to_completion
    async def _stop(self, managed: Managed, deregister: bool) -> None:
        async with managed.lock:
            await self._stop_locked(managed)
            if deregister and self.registrar is not None:
                self.registrar.deregister(managed.status.name)

    @runs_to_completion
    async def _relaunch(self, managed: Managed) -> None:
        async with managed.lock:
            await self._stop_locked(managed)
            if self.stopping:  # the shutdown began while the old process stopped
                log.info("%s: not started again, Guardian is shutting down", managed.status.name)
                return
            managed.status.restarts = 0
            self._launch(managed, fail_fast=False)

    def _start_wait_s(self, managed: Managed) -> float:
        return (managed.status.spec.startup_timeout_s or self.topology.boot.startup_timeout_s) + 1

    def move(self, name: str, port: int) -> None:
        """Changes the port a stopped component will be started on (rebind_port)."""
        self._managed(name).status.port = port

    async def _stop_locked(self, managed: Managed) -> None:
        task, managed.task = managed.task, None
        proc = managed.process
        if (task is None or task.done()) and (proc is None or proc.returncode is not None):
            if managed.status.state not in (State.PENDING, State.FAILED):
                self._set_state(managed, State.STOPPED)
            return
        self._set_state(managed, State.STOPPING)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if proc is not None:
            code = await proc.stop(self.topology.boot.stop_timeout_s)
            log.info("%s stopped (pid %d, exit code %d)", managed.status.name, proc.pid, code)
        managed.status.pid = 0
        self._set_state(managed, State.STOPPED)

    def _launch(self, managed: Managed, *, fail_fast: bool) -> None:
        managed.healing = ""
        managed.task = asyncio.create_task(
            self._lifecycle.run(managed, fail_fast), name=f"lifecycle {managed.status.name}"
        )

    def _spawned(self, name: str) -> None:
        if name not in self._start_order:
            self._start_order.append(name)

    def _child_env(self, status: ComponentStatus) -> dict[str, str]:
        peers = {m.status.name: m.status.address for m in self._components.values()}
        peers["guardian"] = self.guardian_address
        env = child_environment(self.base_env, status, peers, self.data_dir)
        if self.credentials is not None:
            issued = self.credentials.child_env(
                status.name, status.spec.identity, peers.get("gateway")
            )
            env.update({k: v for k, v in issued.items() if k not in status.spec.env})
        return env

    # ---- state -----------------------------------------------------------------------

    def _set_state(self, managed: Managed, state: State) -> None:
        status = managed.status
        previous = status.state
        if previous == state:
            return
        status.state = state
        status.state_since = self.clock()
        level = logging.WARNING if state in (State.FAILED, State.NOT_SERVING) else logging.INFO
        log.log(level, "%s: %s -> %s", status.name, previous.value, state.value)
        change = StateChange(status.snapshot(), previous)
        for queue in list(self._watchers):
            try:
                queue.put_nowait(change)
            except asyncio.QueueFull:
                log.warning("a state watcher fell %d changes behind: dropped", queue.qsize())
                self._watchers.discard(queue)
        if state in (State.SERVING, State.FAILED, State.STOPPED):
            for waiter in managed.waiters:
                if not waiter.done():
                    waiter.set_result(state == State.SERVING)
            managed.waiters.clear()

    async def _wait_ready(
        self, managed: Managed, limit_s: float | None = None, *, pending_ok: bool = False
    ) -> bool:
        """Waits until the component is SERVING (True) or FAILED/STOPPED (False); False
        too when `limit_s` passes first. A PENDING component is waited for only with
        `pending_ok` (a dependency in the same chunk, launched concurrently)."""
        if managed.status.state == State.SERVING:
            return True
        launched = managed.task is not None and not managed.task.done()
        if not launched and (
            managed.status.state in (State.FAILED, State.STOPPED)
            or (managed.status.state == State.PENDING and not pending_ok)
        ):
            return False
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        managed.waiters.append(waiter)
        try:
            return await asyncio.wait_for(waiter, limit_s)
        except TimeoutError:
            return False

    def _refuse_while_stopping(self) -> None:
        if self.stopping:
            raise Unavailable("Guardian is shutting down; components are not started")

    def _managed(self, name: str) -> Managed:
        managed = self._components.get(name)
        if managed is None:
            raise NotFound("component", name)
        return managed
