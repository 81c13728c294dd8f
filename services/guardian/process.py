"""Child processes: spawn with a log file, wait, stop gracefully, and identify by pid.

Each component runs in a session (and process group) of its own, so a stop reaches every
process it forked and a Ctrl-C in Guardian's terminal does not hit the children before
Guardian stops them in order. A process is identified by its pid plus its start time in
/proc, so a recycled pid is never mistaken for a process Guardian started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from services.common.config import env_prefix
from services.common.supervision import SUPERVISOR_PID_ENV
from services.guardian.model import ComponentStatus

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


class ChildProcess:
    """One run of a component's process.

    Args:
        name: Component name, for messages.
        argv: Command line.
        env: Complete environment of the child.
        log_path: File stdout and stderr are appended to.
        cwd: Working directory.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.cwd = cwd
        self.pid = 0
        self.start_ticks: int | None = None
        self.started_at = 0.0
        self._proc: asyncio.subprocess.Process | None = None

    async def spawn(self) -> int:
        """Starts the process; returns its pid."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            out.write(f"=== {stamp} guardian starts {self.name}: {' '.join(self.argv)}\n".encode())
            out.flush()
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
