"""`grace status`, `grace heal`, `grace restart`: ask a running Guardian."""

from __future__ import annotations

from typing import Any

import click
import grpc

from grace.guardian.v1 import guardian_pb2, guardian_pb2_grpc
from services.cli.output import Column, path, to_data
from services.cli.session import Exit, Failure, common_options, session

EXIT_OK = int(Exit.OK)
EXIT_NOT_OK = int(Exit.NOT_OK)
EXIT_UNREACHABLE = int(Exit.UNAVAILABLE)
_TIMEOUT_S = 120.0

COMPONENT_COLUMNS = (
    Column("COMPONENT", path("name")),
    Column("PORT", path("port")),
    Column("PID", lambda c: c.get("pid") or "-"),
    Column("STATE", path("state", "COMPONENT_STATE_"), styled=True),
    Column("RESTARTS", path("total_restarts")),
    Column(
        "NOTE",
        lambda c: c.get("last_error", "") if c.get("state") != "COMPONENT_STATE_SERVING" else "",
    ),
)


def register(cli: click.Group) -> None:
    """Adds `grace status`, `grace heal` and `grace restart`."""
    cli.add_command(status)
    cli.add_command(heal)
    cli.add_command(restart)


def _playbooks() -> list[str]:
    # Imported when needed: the playbooks module pulls in Guardian's storage, which would
    # slow every other command's start.
    from services.guardian.playbooks import PLAYBOOKS

    return list(PLAYBOOKS)


def _known_playbook(value: str) -> str:
    if value and value not in _playbooks():
        raise click.BadParameter(f"{value!r} is not one of {', '.join(_playbooks())}")
    return value


def _guardian_option(function: Any) -> Any:
    return click.option(
        "--guardian",
        metavar="HOST:PORT",
        help="Guardian's address (GRACE_GUARDIAN_ADDR, default 127.0.0.1:8104).",
    )(function)


@click.command()
@_guardian_option
@common_options
def status(guardian: str | None) -> None:
    """Show every component; exit 0 only when all are SERVING."""
    s = session()

    async def ask(
        chan: grpc.aio.Channel,
    ) -> tuple[list[guardian_pb2.Component], guardian_pb2.GetSystemHealthResponse]:
        stub = guardian_pb2_grpc.GuardianServiceStub(chan)
        components: list[guardian_pb2.Component] = []
        token = ""
        while True:
            page = await stub.ListComponents(
                guardian_pb2.ListComponentsRequest(page_size=1000, page_token=token), timeout=5
            )
            components.extend(page.components)
            token = page.next_page_token
            if not token:
                break
        health = await stub.GetSystemHealth(guardian_pb2.GetSystemHealthRequest(), timeout=5)
        return components, health

    components, health = s.call("guardian", ask, address=guardian)
    items = [to_data(c) for c in components]
    system = guardian_pb2.SystemStatus.Name(health.status).removeprefix("SYSTEM_STATUS_")
    if s.printer.is_table:
        s.printer.items(items, COMPONENT_COLUMNS)
        s.printer.line(
            f"\nsystem: {system} ({health.serving_components}/{health.total_components} SERVING)"
        )
    else:
        s.printer.data({"components": items, "system": to_data(health)})
    all_serving = all(c.state == guardian_pb2.COMPONENT_STATE_SERVING for c in components)
    if not (all_serving and health.boot_complete):
        raise click.exceptions.Exit(EXIT_NOT_OK)


@click.command()
@click.argument("component")
@click.option(
    "--playbook",
    default="",
    callback=lambda _ctx, _param, value: _known_playbook(value),
    shell_complete=lambda _ctx, _param, prefix: [p for p in _playbooks() if p.startswith(prefix)],
    help="Playbook to run: restart_component, clear_port, rebind_port, diagnose_network "
    "(default: Guardian picks).",
)
@_guardian_option
@common_options
def heal(component: str, playbook: str, guardian: str | None) -> None:
    """Run a healing playbook on a component; exit 0 when it succeeded."""
    s = session()

    async def ask(chan: grpc.aio.Channel) -> guardian_pb2.HealResponse:
        return await guardian_pb2_grpc.GuardianServiceStub(chan).Heal(
            guardian_pb2.HealRequest(component_name=component, playbook=playbook),
            timeout=_TIMEOUT_S,
        )

    result = s.call("guardian", ask, address=guardian, waiting=f"healing {component}")
    if s.printer.is_table:
        s.printer.line(f"{result.playbook} {result.component_name}: {result.message}")
        for finding in result.findings:
            mark = "ok  " if finding.ok else "FAIL"
            s.printer.line(f"  [{mark}] {finding.check}: {finding.detail}")
    else:
        s.printer.data(to_data(result))
    if not result.success:
        raise click.exceptions.Exit(EXIT_NOT_OK)


@click.command()
@click.argument("component")
@_guardian_option
@common_options
def restart(component: str, guardian: str | None) -> None:
    """Restart a component; exit 0 when it is SERVING again."""
    s = session()

    async def ask(chan: grpc.aio.Channel) -> guardian_pb2.RestartComponentResponse:
        return await guardian_pb2_grpc.GuardianServiceStub(chan).RestartComponent(
            guardian_pb2.RestartComponentRequest(component_name=component), timeout=_TIMEOUT_S
        )

    c = s.call("guardian", ask, address=guardian, waiting=f"restarting {component}").component
    if s.printer.is_table:
        state = guardian_pb2.ComponentState.Name(c.state).removeprefix("COMPONENT_STATE_")
        s.printer.line(f"{c.name}: {state} (pid {c.pid}, port {c.port})")
    else:
        s.printer.data(to_data(c))
    if c.state != guardian_pb2.COMPONENT_STATE_SERVING:
        raise Failure(f"{c.name} is not SERVING after the restart", Exit.NOT_OK)
