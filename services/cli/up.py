"""`grace up` runs Grace in the foreground; `grace down` stops it from another terminal;
`grace logs` reads (and follows) a component's log.

`grace up` keeps `grace-up.json` in its data directory while it runs: its pid, Guardian's
address and every component's address. `grace down` signals that pid (as Ctrl-C would)
and waits for it to end; the other commands read the addresses from it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import click

from services.cli.output import component_table
from services.cli.session import (
    STATE_FILE,
    Exit,
    Failure,
    common_options,
    data_dir_of,
    read_state,
    session,
)
from services.common.config import DEFAULT_PORTS, ConfigError
from services.common.data_dir import secure_data_dir
from services.common.telemetry import TraceContextFilter, configure_logging, configure_tracing
from services.common.tokens import admin_token_file
from services.guardian.config import EXAMPLES_GROUP, SERVICE, GuardianConfig
from services.guardian.model import ComponentStatus, State, StateChange
from services.guardian.process import Zygote, fork_server_for
from services.guardian.topology import Topology, TopologyError, load_topology

EXIT_CONFIG = int(Exit.UNAVAILABLE)
DOWN_TIMEOUT_S = 120.0
_FOLLOW_POLL_S = 0.3


def register(cli: click.Group) -> None:
    """Adds `grace up`, `grace down` and `grace logs`."""
    cli.add_command(up_command)
    cli.add_command(down_command)
    cli.add_command(logs_command)


@click.command(
    "up",
    help="Run Grace in the foreground: boots every component under Guardian, prints a "
    "table when the boot finishes and a line per state change; Ctrl-C (or `grace down`) "
    "stops the components in reverse boot order.",
    short_help="Run Grace in the foreground (Ctrl-C or `grace down` stops it).",
)
@click.option("--config", help="Topology file merged over the built-in one (default ./grace.toml).")
@click.option(
    "--with",
    "groups",
    multiple=True,
    metavar="GROUP",
    help="Also run the components of this topology group (repeatable).",
)
@click.option(
    "--with-examples",
    is_flag=True,
    help=f"Also run the '{EXAMPLES_GROUP}' group (the example domains).",
)
@click.option(
    "--otlp",
    metavar="ENDPOINT",
    help="Export traces of Guardian and every component to this OTLP/gRPC endpoint "
    "(for example localhost:4317, Jaeger's).",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="INSECURE: plaintext gRPC and HTTP, no authentication, no certificates (for "
    "experiments on a trusted machine only; GRACE_INSECURE=true).",
)
@click.option("--data-dir", help="Data directory (default ./.grace; GRACE_DATA_DIR).")
@click.option("--host", help="Interface Guardian binds (GRACE_GUARDIAN_HOST).")
@click.option("--port", type=int, help="Guardian's port (GRACE_GUARDIAN_PORT, 8104).")
@click.option("--database-url", help="Guardian's own store (default SQLite).")
@click.option(
    "--log-level", default="INFO", show_default=True, help="Level of <data dir>/logs/guardian.log."
)
def up_command(**flags: Any) -> None:
    sys.exit(run_up(flags_namespace(flags)))


def flags_namespace(flags: dict[str, Any]) -> argparse.Namespace:
    """The parsed flags of `grace up` as the namespace GuardianConfig.from_env reads."""
    values = dict(flags)
    values["groups"] = list(values.get("groups") or []) or None
    return argparse.Namespace(**values)


def parse_up_flags(argv: Sequence[str]) -> argparse.Namespace:
    """Parses `grace up` arguments without running anything (for tests and tools)."""
    with up_command.make_context("up", list(argv)) as ctx:
        return flags_namespace(ctx.params)


def run_up(args: argparse.Namespace) -> int:
    """Runs `grace up`; returns the exit code."""
    try:
        config = GuardianConfig.from_env(flags=args)
        topology = load_topology(
            config.topology_file,
            groups=config.groups,
            reserved_ports={config.server.port: "guardian"},
        )
    except (ConfigError, TopologyError) as exc:
        print(f"grace up: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    data_dir = config.server.data_dir
    secure_data_dir(data_dir)  # before the first file is written there
    state = read_state(data_dir)
    if state and _is_grace_up(state.get("pid")):
        print(
            f"grace up: already running in {data_dir} (pid {state['pid']}); `grace down` stops it",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    # The fork server first, forked from this process while it has no thread, event loop or
    # log: it shares what this process imported (Guardian's runtime, imported for that
    # first), and imports every component's modules in its own process, on another core,
    # while this one starts Guardian.
    zygote = fork_server_for(topology, config.server.env)
    if zygote is not None:
        import services.guardian.runner  # noqa: F401

        zygote.fork_early()
    log_file = _configure_logging(data_dir, args.log_level)
    configure_tracing(SERVICE, config.server.env)
    names = ", ".join(c.name for c in topology.components)
    print(f"grace up: booting {names} (logs in {log_file.parent})", flush=True)
    with _state_file(data_dir, config, topology):
        return asyncio.run(_boot_and_serve(config, topology, zygote))


async def _boot_and_serve(config: GuardianConfig, topology: Topology, zygote: Zygote | None) -> int:
    if zygote is not None:
        await zygote.launch()
    # Imported here: Guardian's runtime (storage, outbox) would slow every other command.
    from services.guardian.runner import serve

    data_dir = config.server.data_dir
    gateway = topology.component("gateway")
    registry = topology.component("registry")
    reporter = ConsoleReporter(
        sys.stdout,
        how_to_call(
            data_dir,
            gateway.port if gateway else None,
            registry.port if registry else DEFAULT_PORTS["registry"],
        )
        if config.server.security is not None
        else "",
    )
    if config.server.security is None:
        print(INSECURE_WARNING, file=sys.stderr, flush=True)
    return await serve(config, topology, reporter=reporter, zygote=zygote)


@contextlib.contextmanager
def _state_file(data_dir: Path, config: GuardianConfig, topology: Topology) -> Iterator[None]:
    """Writes grace-up.json for `grace down` and the other commands; removes it at the end."""
    host = config.server.host
    connect = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    connect = f"[{connect}]" if ":" in connect else connect
    addresses = {c.name: f"{connect}:{c.port}" for c in topology.components}
    addresses["guardian"] = f"{connect}:{config.server.port}"
    path = data_dir / STATE_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(
        json.dumps(
            {"pid": os.getpid(), "started_at": time.time(), "addresses": addresses}, indent=2
        )
    )
    temporary.replace(path)
    try:
        yield
    finally:
        state = read_state(data_dir)
        if state and state.get("pid") == os.getpid():
            path.unlink(missing_ok=True)


def _is_grace_up(pid: object) -> bool:
    """True when `pid` runs and is a `grace up` (not another process that got the pid of
    one that was killed without removing its file)."""
    if not _alive(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc here: trust the pid
    return b"up" in argv and any(b"grace" in arg or b"services.cli" in arg for arg in argv)


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


INSECURE_WARNING = (
    "\n*** grace up --insecure: NO TLS, NO AUTHENTICATION. Anyone who can reach a port can "
    "read everything, register or move domains, stop components and change policies. "
    "For experiments on a trusted machine only. ***\n"
)


def how_to_call(data_dir: Path, gateway_port: int | None, registry_port: int) -> str:
    """What `grace up` prints about the credential it wrote and how to use it."""
    pki = data_dir / "pki"
    token = admin_token_file(data_dir)
    lines = [
        f"Secure by default: TLS with the Grace CA {pki / 'ca.crt'}, admin token in {token}",
        "(the grace CLI uses both by itself; pass --data-dir or GRACE_DATA_DIR elsewhere).",
        f'  export GRACE_TOKEN="$(cat {token})"',
    ]
    if gateway_port is not None:
        lines.append(
            f'  curl --cacert {pki / "ca.crt"} -H "authorization: Bearer $GRACE_TOKEN" '
            f"https://127.0.0.1:{gateway_port}/domains/list"
        )
    lines.append(
        f"  grpcurl -cacert {pki / 'ca.crt'} -cert {pki / 'client' / 'cli.crt'} "
        f'-key {pki / "client" / "cli.key"} -H "authorization: Bearer $GRACE_TOKEN" '
        f"127.0.0.1:{registry_port} list"
    )
    lines.append("More tokens: grace token create --principal NAME --role reader")
    return "\n".join(lines)


def _configure_logging(data_dir: Path, level: str) -> Path:
    """Everything to <data dir>/logs/guardian.log; only errors to the terminal."""
    configure_logging(level)
    root = logging.getLogger()
    for handler in root.handlers:
        handler.setLevel(logging.ERROR)
    path = data_dir / "logs" / "guardian.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(path)
    file_handler.addFilter(TraceContextFilter())
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(file_handler)
    return path


class ConsoleReporter:
    """Prints what `grace up` users see: a line per state change and the table."""

    def __init__(self, out: TextIO, hint: str = "") -> None:
        self.out = out
        self.hint = hint
        self._gone = False

    def _print(self, text: str, out: TextIO | None = None) -> None:
        # The console is a courtesy (the log file has every line): a terminal or pipe that
        # went away must not stop Guardian supervising, or stopping everything on a signal.
        if self._gone:
            return
        try:
            print(text, file=out or self.out, flush=True)
        except OSError:  # BrokenPipeError among them
            self._gone = True

    def changed(self, change: StateChange) -> None:
        c = change.component
        before = change.previous.value if change.previous else "-"
        detail = ""
        if c.state == State.STARTING and c.pid:
            detail = f" (pid {c.pid}, port {c.port})"
        elif c.state in (State.BACKOFF, State.FAILED, State.NOT_SERVING) and c.last_error:
            detail = f" ({c.last_error})"
        stamp = time.strftime("%H:%M:%S")
        self._print(f"{stamp} {c.name}: {before} -> {c.state.value}{detail}")

    def booted(self, components: list[ComponentStatus], address: str) -> None:
        rows = [(c.name, c.port, c.pid, c.state.value, "") for c in components]
        self._print("")
        self._print(component_table(rows))
        self._print(
            f"\nGrace is up: {len(components)} component(s) supervised by Guardian on "
            f"{address}. Ctrl-C stops everything.\n"
        )
        if self.hint:
            self._print(self.hint + "\n")

    def boot_failed(self, message: str) -> None:
        self._print(f"grace up: {message}", sys.stderr)

    def stopping(self) -> None:
        self._print("stopping Grace: components in reverse boot order...")


# ---- grace down ---------------------------------------------------------------------


@click.command("down")
@common_options
@click.option(
    "--timeout",
    type=click.FloatRange(1, 3600),
    default=DOWN_TIMEOUT_S,
    show_default=True,
    help="Seconds to wait for every component to stop.",
)
def down_command(timeout: float) -> None:
    """Stop the `grace up` running on this data directory, from another terminal.

    Signals it as Ctrl-C would (components stop in reverse boot order) and waits until it
    has exited. Exit 0 when it stopped, 1 when it was still running after --timeout, 3 when
    no `grace up` runs on the data directory.
    """
    s = session()
    state = read_state(s.data_dir)
    pid = state.get("pid") if state else None
    if not isinstance(pid, int) or not _is_grace_up(pid):
        if state is not None:  # left behind by a grace up that was killed
            (s.data_dir / STATE_FILE).unlink(missing_ok=True)
        raise Failure(f"no `grace up` is running in {s.data_dir}", Exit.NOT_FOUND)
    s.printer.note(f"stopping grace up (pid {pid}) in {s.data_dir}...")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and not _reaped(pid):
        if time.monotonic() > deadline:
            raise Failure(f"grace up (pid {pid}) still runs after {timeout:g}s", Exit.NOT_OK)
        time.sleep(0.2)
    result = {"pid": pid, "stopped": True, "data_dir": str(s.data_dir)}
    if s.printer.is_table:
        s.printer.line(f"grace up (pid {pid}) stopped")
    else:
        s.printer.data(result)


def _reaped(pid: int) -> bool:
    """True when `pid` is a zombie (exited, not yet reaped by its parent)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return status.rsplit(")", 1)[-1].split()[0] == "Z"


# ---- grace logs ---------------------------------------------------------------------


@click.command("logs")
@click.argument("component")
@click.option("-f", "--follow", is_flag=True, help="Keep printing lines as they are written.")
@click.option(
    "-n",
    "--lines",
    type=click.IntRange(0, 100_000),
    default=50,
    show_default=True,
    help="How many of the last lines to print first.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    help="Data directory of `grace up` (GRACE_DATA_DIR; default ./.grace).",
)
def logs_command(component: str, follow: bool, lines: int, data_dir: str | None) -> None:
    """Print a component's log (<data dir>/logs/COMPONENT.log); -f follows it.

    Exit 3 when the component has no log there (the message lists those that do).
    """
    directory = data_dir_of(data_dir) / "logs"
    path = directory / f"{component}.log"
    if not path.is_file():
        known = sorted(p.stem for p in directory.glob("*.log")) if directory.is_dir() else []
        hint = f"; logs there: {', '.join(known)}" if known else ""
        raise Failure(f"no log for {component!r} in {directory}{hint}", Exit.NOT_FOUND)
    out = sys.stdout
    with path.open("rb") as handle:
        for line in _last_lines(handle, lines):
            out.write(line.decode(errors="replace"))
        out.flush()
        if not follow:
            return
        try:
            _follow(handle, path, out)
        except KeyboardInterrupt:
            return


def _last_lines(handle: Any, count: int) -> list[bytes]:
    """The last `count` lines of a file, reading backwards in blocks; leaves it at the end."""
    handle.seek(0, os.SEEK_END)
    end = handle.tell()
    data = b""
    position = end
    while position > 0 and data.count(b"\n") <= count:
        step = min(65536, position)
        position -= step
        handle.seek(position)
        data = handle.read(step) + data
    handle.seek(end)
    found: list[bytes] = data.splitlines(keepends=True)
    return found[-count:] if count else []


def _follow(handle: Any, path: Path, out: TextIO) -> None:
    """Prints what is appended to the file until interrupted (reopens it when truncated)."""
    while True:
        chunk = handle.readline()
        if chunk:
            out.write(chunk.decode(errors="replace"))
            out.flush()
            continue
        time.sleep(_FOLLOW_POLL_S)
        try:
            if path.stat().st_size < handle.tell():
                handle.seek(0)
        except OSError:
            continue
