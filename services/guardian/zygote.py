"""A warm fork server for components: one interpreter imports what they share, then forks.

Starting a component with `python -m module` costs about 0.8 s of CPU for imports (gRPC,
protobuf, SQLAlchemy, OpenTelemetry, the generated code) and about 50 MB of private memory
for the same modules in every process. The zygote pays both once: it imports the
components' server modules, freezes the garbage collector's view of them (so collections
in a child do not touch, and so copy, the shared pages), and forks a child per component.
A child starts in milliseconds and shares the imported modules' pages with the zygote
until it writes to them.

Protocol, one JSON object per line: Guardian writes `{"module", "args", "env", "log_path",
"cwd"}` to the zygote's stdin and reads `{"pid": N}` or `{"error": "..."}` back.

What differs from exec: /proc/PID/environ shows the zygote's environment (the component's
own is in its `os.environ`), and the process title is set to the command line an exec
would have had.

Process identity: the zygote double-forks, so the component is not the zygote's child but
is re-parented to Guardian, which marks itself a child subreaper (PR_SET_CHILD_SUBREAPER).
Guardian therefore reaps and reads the exit status of a forked component exactly as it
does for one it started with exec, and a component never depends on the zygote staying
alive. Each child runs in a session of its own, with the environment, argv, working
directory and log file it would have had with exec; it runs the module as `__main__` and
exits through the interpreter's normal shutdown (atexit handlers included).

Forking is safe only before a process starts threads: the zygote imports modules and does
nothing else (no event loop, no gRPC channel or server), and refuses to run on a system
without fork.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import json
import logging
import os
import runpy
import signal
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import setproctitle

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


def _become_component(request: dict[str, Any], report: int) -> None:
    """In the grandchild: turns this process into the component. Never returns."""
    os.setsid()
    os.write(report, f"{os.getpid()}\n".encode())
    os.close(report)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as Python sets it at start-up
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
    gc.unfreeze()
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


def _spawn(request: dict[str, Any]) -> int:
    """Double-forks the component; returns its pid (a grandchild of the zygote)."""
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:  # the intermediate child: fork the component and leave at once
        os.close(read_end)
        try:
            component = os.fork()
        except OSError:
            os._exit(1)
        if component == 0:
            _become_component(request, write_end)  # raises SystemExit when the module ends
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as reader:
        line = reader.readline()
    os.waitpid(middle, 0)
    if not line.strip():
        raise OSError("the component process did not start")
    return int(line)


def serve(requests: TextIO, replies: TextIO) -> None:
    """Answers spawn requests until stdin closes."""
    for line in requests:
        if not line.strip():
            continue
        try:
            reply: dict[str, Any] = {"pid": _spawn(json.loads(line))}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            reply = {"error": str(exc)}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m services.guardian.zygote MODULE...`: preload, say ready, serve."""
    modules = list(sys.argv[1:] if argv is None else argv)
    if not hasattr(os, "fork"):
        print(json.dumps({"error": "fork is not available on this system"}), flush=True)
        return 2
    # setproctitle finds the memory of argv when first used; do it here, while the
    # environment is still the one the process started with (a child replaces it).
    setproctitle.setproctitle(setproctitle.getproctitle())
    failed = preload(modules)
    # Everything imported so far lives as long as the zygote: keep the collector off it, so
    # a child's collections neither scan it nor dirty (and so copy) its pages.
    gc.collect()
    gc.freeze()
    print(json.dumps({"ready": True, "not_preloaded": failed}), flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        serve(sys.stdin, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
