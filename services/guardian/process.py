"""Child processes: spawn with a log file, wait, stop gracefully, and identify by pid.

Each component runs in a session (and process group) of its own, so a stop reaches every
process it forked and a Ctrl-C in Guardian's terminal does not hit the children before
Guardian stops them in order. A process is identified by its pid plus its start time in
/proc, so a recycled pid is never mistaken for a process Guardian started.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from services.common.config import env_prefix
from services.common.supervision import SUPERVISOR_PID_ENV
from services.guardian.model import ComponentStatus
from services.guardian.topology import Topology

log = logging.getLogger(__name__)


def process_start_ticks(pid: int) -> int | None:
    """The start time of a process in clock ticks since boot (/proc), or None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])


def process_group(pid: int) -> int | None:
    """The process group id of a process, or None if it is gone."""
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists (zombies excluded)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_group(pgid: int, sig: signal.Signals) -> bool:
    """Sends a signal to a process group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


class _EarlyForkedServer:
    """The fork server forked by `Zygote.fork_early`, as `Zygote` uses an asyncio
    subprocess: its request and reply pipes as streams, its exit code once it ends (from a
    pidfd, which says when it exits without a thread or a SIGCHLD handler)."""

    def __init__(
        self,
        pid: int,
        stdin: asyncio.StreamWriter,
        stdout: asyncio.StreamReader,
        pidfd: int,
    ) -> None:
        self.pid = pid
        self.stdin = stdin
        self.stdout = stdout
        self.returncode: int | None = None
        self._pidfd = pidfd
        self._exited = asyncio.Event()
        asyncio.get_running_loop().add_reader(pidfd, self._reap)

    @classmethod
    async def adopt(cls, pid: int, requests: int, replies: int) -> _EarlyForkedServer:
        """Takes over the pipes' ends and the process (`requests` is written, `replies`
        read)."""
        loop = asyncio.get_running_loop()
        stdout = asyncio.StreamReader()
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stdout), os.fdopen(replies, "rb", buffering=0)
        )
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(requests, "wb", buffering=0)
        )
        stdin = asyncio.StreamWriter(transport, protocol, None, loop)
        return cls(pid, stdin, stdout, os.pidfd_open(pid))

    def _reap(self) -> None:
        asyncio.get_running_loop().remove_reader(self._pidfd)
        os.close(self._pidfd)
        _, status = os.waitpid(self.pid, 0)
        self.returncode = os.waitstatus_to_exitcode(status)
        self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


class Zygote:
    """Guardian's handle on the fork server (`services.guardian.zygote`).

    The zygote is the parent of the components it forks: it reaps them and reports each
    exit code, which a reader task hands to the waiting `ForkedProcess`.

    Args:
        preload: Modules the zygote imports before it forks anything.
        env: The zygote's environment (components get their own, per spawn).
    """

    def __init__(self, preload: Sequence[str], env: Mapping[str, str]) -> None:
        self.preload = list(preload)
        self.env = dict(env)
        self._proc: asyncio.subprocess.Process | _EarlyForkedServer | None = None
        self._early: tuple[int, int, int] | None = None  # pid, requests and replies pipes
        self._lock = asyncio.Lock()
        self._reply: asyncio.Future[dict[str, Any]] | None = None
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        """The fork server's pid, once launched."""
        return None if self._proc is None else self._proc.pid

    def fork_early(self) -> None:
        """Forks the fork server from this process, now, instead of starting a fresh
        interpreter for it in `launch`.

        What this process has imported by now (gRPC, protobuf, SQLAlchemy, cryptography,
        Grace's common runtime: most of what the components import) is then one copy shared
        by it, the fork server and every component, instead of a second copy imported again
        by the fork server (about 20 MB of the default topology's memory), and the fork
        server starts with those imports done. Call it before this process starts a thread
        or an event loop or opens a log: a fork copies only the calling thread, and the fork
        server runs on what it inherits. Without `os.pidfd_open` (not Linux 5.3+), it does
        nothing and `launch` starts the fork server with exec as before.
        """
        if self._proc is not None or self._early is not None or not hasattr(os, "pidfd_open"):
            return
        requests_read, requests_write = os.pipe()
        replies_read, replies_write = os.pipe()
        sys.stdout.flush()  # what is buffered is this process's to write, once
        sys.stderr.flush()
        # The imports live as long as this process: its collections leave them (and so the
        # pages it shares with the fork server and the components) alone.
        gc.collect()
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            os.close(requests_write)
            os.close(replies_read)
            from services.guardian.zygote import serve_forked

            # Never returns here: the fork server exits, a component raises SystemExit.
            serve_forked(self.preload, requests_read, replies_write)
        os.close(requests_read)
        os.close(replies_write)
        self._early = (pid, requests_write, replies_read)

    async def launch(self) -> None:
        """Starts the zygote's process without waiting for its imports (idempotent).

        `grace up` forks it (`fork_early`) or launches it before importing Guardian's own
        runtime, so the zygote's imports run on another core while Guardian imports and
        starts; `start` then waits.
        """
        if self._proc is not None:
            return
        if self._early is not None:
            pid, requests, replies = self._early
            self._early = None
            self._proc = await _EarlyForkedServer.adopt(pid, requests, replies)
        else:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.guardian.zygote",
                *self.preload,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=self.env,
            )
        self._reply = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(), name="fork server reader")

    async def start(self, timeout_s: float = 60.0) -> None:
        """Starts the zygote (unless launched already) and waits until it has imported the
        preload modules."""
        await self.launch()
        assert self._reply is not None
        ready = await asyncio.wait_for(asyncio.shield(self._reply), timeout_s)
        if not ready.get("ready"):
            raise OSError(f"the fork server did not start: {ready.get('error', ready)}")
        if ready.get("not_preloaded"):
            log.info("fork server: not preloaded: %s", ", ".join(ready["not_preloaded"]))

    @property
    def alive(self) -> bool:
        """True while the zygote runs."""
        return self._proc is not None and self._proc.returncode is None

    async def spawn(
        self,
        module: str,
        args: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        cwd: Path | None,
    ) -> ForkedProcess:
        """Forks a component running `module` as `__main__`."""
        request = {
            "module": module,
            "args": list(args),
            "env": dict(env),
            "log_path": str(log_path),
            "cwd": str(cwd) if cwd else "",
        }
        async with self._lock:  # one request in flight: replies come back in order
            if self._proc is None or self._proc.stdin is None or not self.alive:
                raise OSError("the fork server is not running")
            self._reply = asyncio.get_running_loop().create_future()
            self._proc.stdin.write((json.dumps(request) + "\n").encode())
            await self._proc.stdin.drain()
            reply = await self._reply
        if "pid" not in reply:
            raise OSError(f"the fork server could not start {module}: {reply.get('error')}")
        pid = int(reply["pid"])
        exited = self._exits.setdefault(pid, asyncio.get_running_loop().create_future())
        return ForkedProcess(pid, exited, lambda: self._forget(pid))

    def _forget(self, pid: int) -> None:
        self._exits.pop(pid, None)

    async def _read(self) -> None:
        assert self._proc is not None
        stdout = self._proc.stdout
        try:
            while stdout is not None and (line := await stdout.readline()):
                message = json.loads(line)
                if "exited" in message:
                    future = self._exits.setdefault(
                        int(message["exited"]), asyncio.get_running_loop().create_future()
                    )
                    if not future.done():
                        future.set_result(int(message["code"]))
                elif "not_preloaded" in message and "ready" not in message:
                    log.info("fork server: not preloaded: %s", ", ".join(message["not_preloaded"]))
                elif self._reply is not None and not self._reply.done():
                    self._reply.set_result(message)
        finally:
            # The zygote is gone: its children are orphaned and stop by themselves (their
            # supervisor is gone); their exit codes are lost.
            gone = OSError("the fork server exited")
            if self._reply is not None and not self._reply.done():
                self._reply.set_exception(gone)
            for future in self._exits.values():
                if not future.done():
                    future.set_result(-1)

    async def close(self) -> None:
        """Stops the zygote (Guardian stops the components first)."""
        if self._proc is None:
            return
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            await asyncio.wait_for(self._proc.wait(), 5.0)
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._proc = None


def fork_server_for(topology: Topology, env: Mapping[str, str]) -> Zygote | None:
    """The fork server for a topology's Python components (not yet started), or None when
    the topology turns it off, has no module to preload, or the system has no fork()."""
    if not topology.boot.fork_server:
        return None
    # In boot order: the zygote is ready once the first is imported, and imports the others
    # while the first chunks start.
    modules = list(
        dict.fromkeys(spec.module for chunk in topology.chunks() for spec in chunk if spec.module)
    )
    if not modules:
        return None
    if not hasattr(os, "fork"):
        log.info("fork server off: this system has no fork()")
        return None
    return Zygote(modules, env)


class ForkedProcess:
    """A component forked by the zygote: its exit code comes from the zygote's report.

    Args:
        pid: The component's pid.
        exited: Resolved with the exit code when the zygote reports the exit.
        forget: Called once the exit is known (the zygote drops its record).
    """

    def __init__(self, pid: int, exited: asyncio.Future[int], forget: Callable[[], None]) -> None:
        self.pid = pid
        self._exited = exited
        self._exited.add_done_callback(lambda _: forget())

    @property
    def returncode(self) -> int | None:
        """The exit code once the zygote reported it."""
        return self._exited.result() if self._exited.done() else None

    async def wait(self) -> int:
        """Waits for the exit; returns the exit code (-1 when the zygote died first)."""
        return await asyncio.shield(self._exited)


class ChildProcess:
    """One run of a component's process.

    Args:
        name: Component name, for messages.
        argv: Command line.
        env: Complete environment of the child.
        log_path: File stdout and stderr are appended to.
        cwd: Working directory.
        module: The Python module the command line runs (`python -m module`), when it is
            one: with a `zygote`, the process is forked from it instead of exec'd.
        zygote: The fork server, if Guardian runs one.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        cwd: Path | None = None,
        *,
        module: str | None = None,
        zygote: Zygote | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.cwd = cwd
        self.module = module
        self.zygote = zygote
        self.pid = 0
        self.start_ticks: int | None = None
        self.started_at = 0.0
        self._proc: asyncio.subprocess.Process | ForkedProcess | None = None

    async def spawn(self) -> int:
        """Starts the process; returns its pid."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        zygote = self.zygote if self.zygote is not None and self.zygote.alive else None
        with self.log_path.open("ab") as out:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            how = "forks" if zygote and self.module else "starts"
            out.write(f"=== {stamp} guardian {how} {self.name}: {' '.join(self.argv)}\n".encode())
            out.flush()
            if zygote is not None and self.module is not None:
                args = self.argv[3:]  # after `python -m module`
                self._proc = await zygote.spawn(
                    self.module, args, self.env, self.log_path, self.cwd
                )
            else:
                self._proc = await asyncio.create_subprocess_exec(
                    *self.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    env=self.env,
                    cwd=self.cwd,
                    start_new_session=True,
                )
        self.pid = self._proc.pid
        self.started_at = time.time()
        self.start_ticks = process_start_ticks(self.pid)
        return self.pid

    @property
    def returncode(self) -> int | None:
        """Exit code once the process has exited (negative: killed by that signal)."""
        return None if self._proc is None else self._proc.returncode

    async def wait(self) -> int:
        """Waits for the process to exit; returns its exit code."""
        if self._proc is None:
            raise RuntimeError(f"{self.name}: not started")
        return await self._proc.wait()

    async def stop(self, timeout_s: float) -> int:
        """SIGTERM to the process group, SIGKILL after `timeout_s`; returns the exit code.

        Whatever the process left behind in its group is killed too.
        """
        if self._proc is None:
            raise RuntimeError(f"{self.name}: not started")
        if self._proc.returncode is None:
            kill_group(self.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self._proc.wait(), timeout=timeout_s)
            except TimeoutError:
                log.warning(
                    "%s (pid %d) did not stop within %.1fs: SIGKILL", self.name, self.pid, timeout_s
                )
                kill_group(self.pid, signal.SIGKILL)
                await self._proc.wait()
        self.reap_group()
        return self._proc.returncode if self._proc.returncode is not None else 0

    def reap_group(self) -> None:
        """Kills what remains of the process group after the leader exited."""
        if self.pid:
            with contextlib.suppress(PermissionError):
                kill_group(self.pid, signal.SIGKILL)

    def tail(self, lines: int = 20) -> str:
        """The last lines of the log file."""
        return tail_file(self.log_path, lines)


def child_environment(
    base: Mapping[str, str],
    status: ComponentStatus,
    peers: Mapping[str, str],
    data_dir: Path,
) -> dict[str, str]:
    """The environment of a component's process.

    Its own GRACE_<NAME>_PORT and _HOST, GRACE_DATA_DIR, GRACE_<PEER>_ADDR for every peer
    (Guardian included), OTEL_SERVICE_NAME set to the component's name (its traces are
    told apart from the others'; the OTEL_* export variables are inherited), then the
    topology's `env` for the component on top.
    """
    env = dict(base)
    env["OTEL_SERVICE_NAME"] = status.name
    env["GRACE_DATA_DIR"] = str(data_dir)
    env["PYTHONUNBUFFERED"] = "1"
    env[SUPERVISOR_PID_ENV] = str(os.getpid())
    for peer, address in peers.items():
        env[f"{env_prefix(peer)}ADDR"] = address
    prefix = env_prefix(status.name)
    env[f"{prefix}PORT"] = str(status.port)
    env[f"{prefix}HOST"] = status.host
    env.update(status.spec.env)
    return env


def tail_file(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a text file ("" when it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])
