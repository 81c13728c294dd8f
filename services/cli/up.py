"""`grace up`: runs Guardian and every component in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import TextIO

from services.cli.output import component_table
from services.common.config import DEFAULT_PORTS, ConfigError
from services.common.telemetry import TraceContextFilter, configure_logging, configure_tracing
from services.common.tokens import admin_token_file
from services.guardian.config import SERVICE, GuardianConfig, add_guardian_flags
from services.guardian.model import ComponentStatus, State, StateChange
from services.guardian.runner import serve
from services.guardian.topology import TopologyError, load_topology

EXIT_CONFIG = 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `grace up`."""
    parser = subparsers.add_parser(
        "up",
        help="run Grace in the foreground (Ctrl-C stops everything)",
        description="Boots every component under Guardian, prints a table when the boot "
        "finishes and a line per state change; Ctrl-C stops the components in reverse boot "
        "order.",
    )
    add_guardian_flags(parser)
    parser.add_argument("--data-dir", help="data directory (default ./.grace; GRACE_DATA_DIR)")
    parser.add_argument("--host", help="interface Guardian binds (GRACE_GUARDIAN_HOST)")
    parser.add_argument("--port", type=int, help="Guardian's port (GRACE_GUARDIAN_PORT, 8104)")
    parser.add_argument("--database-url", help="Guardian's own store (default SQLite)")
    parser.add_argument(
        "--log-level", default="INFO", help="level of <data dir>/logs/guardian.log (INFO)"
    )
    parser.set_defaults(handler=run_up)


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
    log_file = _configure_logging(config.server.data_dir, args.log_level)
    configure_tracing(SERVICE, config.server.env)
    names = ", ".join(c.name for c in topology.components)
    print(f"grace up: booting {names} (logs in {log_file.parent})", flush=True)
    gateway = topology.component("gateway")
    registry = topology.component("registry")
    reporter = ConsoleReporter(
        sys.stdout,
        how_to_call(
            config.server.data_dir,
            gateway.port if gateway else None,
            registry.port if registry else DEFAULT_PORTS["registry"],
        )
        if config.server.security is not None
        else "",
    )
    if config.server.security is None:
        print(INSECURE_WARNING, file=sys.stderr, flush=True)
    return asyncio.run(serve(config, topology, reporter=reporter))


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

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)

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
        print(f"grace up: {message}", file=sys.stderr, flush=True)

    def stopping(self) -> None:
        self._print("stopping Grace: components in reverse boot order...")
