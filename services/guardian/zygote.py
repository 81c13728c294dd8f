"""A warm fork server for components: one interpreter imports what they share, then forks.

Starting a component with `python -m module` costs about 0.8 s of CPU for imports (gRPC,
protobuf, SQLAlchemy, OpenTelemetry, the generated code) and about 50 MB of private memory
for the same modules in every process. The zygote pays both once: it imports the
components' server modules, freezes the garbage collector's view of them (so collections
in a child do not touch, and so copy, the shared pages), and forks a child per component.
A child starts in milliseconds and shares the imported modules' pages with the zygote
until it writes to them.

The zygote says it is ready once the first module is imported (Guardian names them in boot
order), and imports the others one at a time while no request waits, or at once when a
request needs one: the first chunk starts while the zygote is still importing what later
chunks run, so the boot does not wait for every import. A child shares what was imported
before its fork, which includes its own modules.

Protocol, one JSON object per line. Guardian writes `{"module", "args", "env", "log_path",
"cwd"}` to the zygote's stdin; the zygote answers `{"pid": N}` (or `{"error": "..."}`) in
order, and whenever a component exits, `{"exited": N, "code": C}` with the exit code as
asyncio reports it (negative: killed by that signal), and `{"not_preloaded": [...]}` for a
module it could not import ahead. The zygote is the components' parent
and reaps them.

Each child runs in a session of its own, with the environment, argv, working directory and
log file it would have had with exec; it runs the module as `__main__` and exits through
the interpreter's normal shutdown (atexit handlers included). Its supervisor, for the
orphan watch of `services.common.supervision`, is the zygote: when Guardian dies, the
zygote reads the end of its stdin and exits, and its children, re-parented, shut down.

What differs from exec: /proc/PID/environ shows the zygote's environment (the component's
own is in its `os.environ`), and the process title is set to the command line an exec
would have had.

`grace up` forks the zygote from its own process (`serve_forked`, see
`Zygote.fork_early`) instead of exec'ing it, so that the modules Guardian imported are one
copy for Guardian, the zygote and every component; `python -m services.guardian.zygote`
remains for a Guardian that cannot (and for `python -m services.guardian`).

Forking is safe only before a process starts threads: the zygote imports modules and does
nothing else (no event loop, no gRPC channel or server), and refuses to run on a system
without fork.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import json
import logging
import os
import runpy
import select
import signal
import sys
from collections.abc import Sequence
from typing import Any, BinaryIO, NoReturn

import setproctitle

from services.common.supervision import SUPERVISOR_PID_ENV
from services.common.telemetry import DEFAULT_LOG_LEVEL

log = logging.getLogger(__name__)


def preload(modules: Sequence[str]) -> list[str]:
    """Imports what the components run: for a package, its `server` submodule when there is
    one, else the package (its `__main__` runs in the child); a plain module is left to the
    child, since running a module as `__main__` that is already imported runs it twice.
    Returns the modules not preloaded."""
    skipped = []
    for name in modules:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None or spec.submodule_search_locations is None:
            skipped.append(name)
            continue
        for candidate in (f"{name}.server", name):
            try:
                importlib.import_module(candidate)
                break
            except ImportError:
                continue
            except Exception:  # a module that fails at import fails in the child, visibly
                skipped.append(name)
                break
    return skipped


def _become_component(request: dict[str, Any], started: int) -> None:
    """In the child: turns this process into the component. Never returns.

    `started` is closed once the child leads its own session, so that the pid the zygote
    reports can already be signalled as a process group."""
    os.setsid()
    os.close(started)
    signal.set_wakeup_fd(-1)
    # Signal dispositions as a fresh interpreter has them.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    log_fd = os.open(request["log_path"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.closerange(3, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 1024)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115  # the process's own stdin
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    if request.get("cwd"):
        os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.environ[SUPERVISOR_PID_ENV] = str(os.getppid())  # the zygote: see the module doc
    # What the zygote imported stays frozen in the child: a full collection would scan it
    # and write the collector's marks into it, copying every page of it into the child
    # (about 30 MB; a server freezes what it has once it serves, but a collection before
    # that, or in a process that does not, pays it: the gateway, which did not, grew by
    # 27 MB in 90 s of load). Its cycles that become garbage later are not collected;
    # they are module-level and live as long as the process anyway.
    module = request["module"]
    # `ps`, `top` and /proc/PID/cmdline show what an exec'd component would show.
    setproctitle.setproctitle(" ".join([sys.executable, "-m", module, *request["args"]]))
    sys.argv = [module, *request["args"]]
    code: int | str | None = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    # Leave through the interpreter's normal shutdown (atexit, buffered output), from here:
    # the zygote's frames below this one never run again in this process.
    raise SystemExit(code)


class _Server:
    """The zygote's loop: spawn requests on stdin, replies and exit reports on stdout."""

    def __init__(self, requests: int, replies: BinaryIO, pending: Sequence[str] = ()) -> None:
        self.requests = requests
        self.replies = replies
        self.buffer = b""
        # Modules still to preload, in boot order: imported one at a time while no request
        # waits, and at once when a request needs one.
        self.pending = list(pending)
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        self.wake = wake_read
        # SIGCHLD wakes the select() below through this pipe; the handler itself does nothing.
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)

    def send(self, message: dict[str, Any]) -> None:
        self.replies.write(json.dumps(message).encode() + b"\n")
        self.replies.flush()

    def run(self) -> None:
        """Serves until stdin ends (Guardian is gone), then returns."""
        while True:
            try:
                readable, _, _ = select.select(
                    [self.requests, self.wake], [], [], 0 if self.pending else None
                )
            except InterruptedError:
                continue
            if not readable and self.pending:
                self.preload([self.pending[0]])
                continue
            if self.wake in readable:
                while True:
                    try:
                        if not os.read(self.wake, 512):
                            break
                    except BlockingIOError:
                        break
                self.reap()
            if self.requests in readable:
                chunk = os.read(self.requests, 65536)
                if not chunk:
                    return
                self.buffer += chunk
                while b"\n" in self.buffer:
                    line, self.buffer = self.buffer.split(b"\n", 1)
                    if line.strip():
                        self.spawn(line)

    def preload(self, modules: Sequence[str]) -> None:
        """Preloads these modules now (those still pending), reporting any it could not."""
        self.pending = [name for name in self.pending if name not in modules]
        failed = preload(modules)
        if failed:
            self.send({"not_preloaded": failed})

    def spawn(self, line: bytes) -> None:
        try:
            request = json.loads(line)
            if request.get("module") in self.pending:
                self.preload([request["module"]])
            # What is imported lives as long as the zygote: keep the collector off it, so
            # a child's collections neither scan it nor dirty (and so copy) its pages (the
            # child leaves it frozen: see `_become_component`).
            gc.freeze()
            started_read, started_write = os.pipe()
            pid = os.fork()
        except (OSError, ValueError) as exc:
            self.send({"error": str(exc)})
            return
        if pid == 0:
            os.close(started_read)
            _become_component(request, started_write)  # raises SystemExit when it ends
        os.close(started_write)
        os.read(started_read, 1)  # EOF once the child has its own session (or died)
        os.close(started_read)
        self.send({"pid": pid})

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.send({"exited": pid, "code": os.waitstatus_to_exitcode(status)})


def _leave_stop_signals_to_guardian() -> None:
    """Ignores SIGINT and SIGTERM: Guardian stops the zygote by closing its stdin.

    The zygote shares Guardian's process group, so a Ctrl-C, a `kill -- -PGID` or a service
    manager's stop reaches it too. Exiting then would orphan every component at once (their
    orphan watch stops them) while Guardian is still stopping them in order. A child gets
    the default dispositions back (`_become_component`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def serve(modules: Sequence[str], requests: int, replies: BinaryIO) -> None:
    """Preloads the first module, says ready, and serves until `requests` ends (Guardian is
    gone), preloading the others, in the order given, while no request waits."""
    # The level every component sets: a component then finds it set and leaves the loggers
    # it inherits alone (see `configure_logging`).
    logging.getLogger().setLevel(DEFAULT_LOG_LEVEL)
    failed = preload(modules[:1])
    gc.collect()  # the import-time garbage, before anything is frozen
    server = _Server(requests, replies, modules[1:])
    server.send({"ready": True, "not_preloaded": failed})
    _leave_stop_signals_to_guardian()
    server.run()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m services.guardian.zygote MODULE...`: preload the first module, say ready,
    serve (preloading the others, in the order given, while no request waits).

    Guardian names the modules in boot order, so the first chunk forks as soon as its
    module is imported, and the rest are imported while the first components start."""
    modules = list(sys.argv[1:] if argv is None else argv)
    if not hasattr(os, "fork"):
        print(json.dumps({"error": "fork is not available on this system"}), flush=True)
        return 2
    # setproctitle finds the memory of argv when first used; do it here, while the
    # environment is still the one the process started with (a child replaces it).
    setproctitle.setproctitle(setproctitle.getproctitle())
    serve(modules, sys.stdin.fileno(), sys.stdout.buffer)
    return 0


def serve_forked(modules: Sequence[str], requests: int, replies: int) -> NoReturn:
    """The fork server in a process forked from Guardian's (`Zygote.fork_early`), on the
    pipes `requests` and `replies`. Never returns in the fork server, which ends with
    `os._exit`: Guardian's frames below this one are not its own.

    A component forked from here ends by raising SystemExit out of this function (see
    `_become_component`): it unwinds through those frames to the interpreter's normal
    shutdown, as it would from an exec'd fork server. Guardian forks before it has a
    thread, an event loop or a log file, so those frames hold nothing a component could
    trip on."""
    fork_server = os.getpid()
    code = 0
    try:
        _leave_stop_signals_to_guardian()
        os.dup2(requests, 0)
        os.dup2(replies, 1)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        replies_file = open(1, "wb", closefd=False)  # noqa: SIM115
        sys.stdin = open(0, closefd=False)  # noqa: SIM115  # the process's own stdin
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        # What `ps` and the process tree show: the command an exec'd fork server runs.
        setproctitle.setproctitle(" ".join([sys.executable, "-m", __name__, *modules]))
        serve(modules, 0, replies_file)
    except SystemExit:
        if os.getpid() != fork_server:
            raise  # a component's end
        code = 1
    except BaseException:
        if os.getpid() != fork_server:
            raise
        import traceback

        traceback.print_exc()
        code = 1
    os._exit(code)


if __name__ == "__main__":
    raise SystemExit(main())
