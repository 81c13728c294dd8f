"""`grace domains list|get|watch`: the registry's domains."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import click
import grpc

from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.cli.output import Column, path, to_data
from services.cli.session import CALL_TIMEOUT_S, common_options, session
from services.cli.streams import follow

_STATUS = "DOMAIN_STATUS_"
STATUSES = ("healthy", "degraded", "unhealthy")
PAGE_SIZE = 500

DOMAIN_COLUMNS = (
    Column("DOMAIN", path("domain_id")),
    Column("STATUS", path("status", _STATUS), styled=True),
    Column("ADDRESS", path("address")),
    Column("VERSION", path("version")),
    Column("CAPABILITIES", path("capabilities")),
    Column("LOAD", lambda d: f"{float(d.get('metrics', {}).get('load', 0)):.2f}"),
    Column("LAST HEARTBEAT", path("last_heartbeat_at")),
)
CHANGE_COLUMNS = (
    Column("REVISION", path("revision"), width=8),
    Column("CHANGE", path("kind", "CHANGE_KIND_"), width=14),
    Column("DOMAIN", path("domain.domain_id"), width=20),
    Column("STATUS", path("domain.status", _STATUS), styled=True, width=9),
    Column("ADDRESS", path("domain.address")),
)


def register(cli: click.Group) -> None:
    """Adds `grace domains`."""
    cli.add_command(domains)


@click.group()
def domains() -> None:
    """Domains registered in the registry."""


@domains.command("list")
@click.option("--status", type=click.Choice(STATUSES), help="Only domains in this status.")
@click.option("--capability", help="Only domains offering this capability.")
@common_options
def list_domains(status: str | None, capability: str | None) -> None:
    """List the registered domains."""
    s = session()
    wanted = (
        registry_pb2.DomainStatus.Value(_STATUS + status.upper())
        if status
        else registry_pb2.DOMAIN_STATUS_UNSPECIFIED
    )

    async def ask(chan: grpc.aio.Channel) -> list[registry_pb2.Domain]:
        stub = registry_pb2_grpc.RegistryServiceStub(chan)
        found: list[registry_pb2.Domain] = []
        token = ""
        while True:
            page = await stub.ListDomains(
                registry_pb2.ListDomainsRequest(
                    page_size=PAGE_SIZE,
                    page_token=token,
                    status=wanted,
                    capability=capability or "",
                ),
                timeout=CALL_TIMEOUT_S,
            )
            found.extend(page.domains)
            token = page.next_page_token
            if not token:
                return found

    s.printer.items([to_data(d) for d in s.call("registry", ask)], DOMAIN_COLUMNS)


@domains.command("get")
@click.argument("domain_id")
@common_options
def get_domain(domain_id: str) -> None:
    """Show one domain (exit 3 when it is not registered)."""
    s = session()

    async def ask(chan: grpc.aio.Channel) -> registry_pb2.GetDomainResponse:
        return await registry_pb2_grpc.RegistryServiceStub(chan).GetDomain(
            registry_pb2.GetDomainRequest(domain_id=domain_id), timeout=CALL_TIMEOUT_S
        )

    domain = to_data(s.call("registry", ask).domain)
    s.printer.record(
        domain,
        [
            *DOMAIN_COLUMNS,
            Column("REGISTERED", path("registered_at")),
            Column("LEASE EXPIRES", path("lease_expires_at")),
            Column("METADATA", path("metadata")),
            Column("REVISION", path("revision")),
        ],
    )


@domains.command("watch")
@click.option(
    "--after-revision",
    type=click.IntRange(0),
    default=0,
    help="Resume after this revision (0: start with a snapshot of every domain).",
)
@click.option(
    "--count", type=click.IntRange(1), help="Stop after this many changes (default: never)."
)
@common_options
def watch_domains(after_revision: int, count: int | None) -> None:
    """Print domain changes as they happen (a snapshot first); Ctrl-C stops."""
    s = session()

    async def changes(chan: grpc.aio.Channel) -> AsyncIterator[dict[str, Any]]:
        stub = registry_pb2_grpc.RegistryServiceStub(chan)
        async for response in stub.WatchDomains(
            registry_pb2.WatchDomainsRequest(after_revision=after_revision)
        ):
            for change in response.changes:
                yield to_data(change)

    follow(s, "registry", changes, CHANGE_COLUMNS, count)
