"""`grace memory contribute|query|show`: shared memory."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click
import grpc
from google.protobuf import struct_pb2

from grace.memory.v1 import memory_pb2, memory_pb2_grpc
from services.cli.output import Column, path, to_data
from services.cli.session import CALL_TIMEOUT_S, common_options, parse_json_object, session

PAGE_SIZE = 100
DEFAULT_RESULTS = 20
MAX_RESULTS = 1000

CONTRIBUTION_COLUMNS = (
    Column("CONTRIBUTION", path("contribution_id")),
    Column("DOMAIN", path("domain_id")),
    Column("TYPE", path("contribution_type")),
    Column("CONFIDENCE", lambda c: f"{float(c.get('confidence', 0)):.2f}"),
    Column("VERIFIED", path("verifications")),
    Column("DISPUTED", path("disputes")),
    Column("TAGS", path("tags")),
    Column("CONTENT", path("content")),
)


def register(cli: click.Group) -> None:
    """Adds `grace memory`."""
    cli.add_command(memory)


@click.group()
def memory() -> None:
    """Knowledge the domains share."""


def _stub(chan: grpc.aio.Channel) -> memory_pb2_grpc.SharedMemoryServiceAsyncStub:
    return memory_pb2_grpc.SharedMemoryServiceStub(chan)


@memory.command()
@click.option("--domain", "domain_id", required=True, help="The contributing domain.")
@click.option("--type", "contribution_type", required=True, help="Kind of knowledge.")
@click.option(
    "-c",
    "--content",
    required=True,
    metavar="JSON|@FILE",
    help="The knowledge: a JSON object, or @FILE (@- reads stdin).",
)
@click.option("--tag", "tags", multiple=True, help="A tag (repeatable).")
@click.option("--confidence", type=click.FloatRange(0, 1), help="Initial confidence (0..1).")
@click.option("--request-id", default="", help="Idempotency key.")
@common_options
def contribute(
    domain_id: str,
    contribution_type: str,
    content: str,
    tags: tuple[str, ...],
    confidence: float | None,
    request_id: str,
) -> None:
    """Contribute knowledge; prints the contribution."""
    s = session()
    body = struct_pb2.Struct()
    body.update(parse_json_object(content, "--content"))
    request = memory_pb2.ContributeRequest(
        domain_id=domain_id,
        contribution_type=contribution_type,
        content=body,
        tags=list(tags),
        request_id=request_id,
    )
    if confidence is not None:
        request.initial_confidence = confidence

    async def ask(chan: grpc.aio.Channel) -> memory_pb2.ContributeResponse:
        return await _stub(chan).Contribute(request, timeout=CALL_TIMEOUT_S)

    s.printer.record(to_data(s.call("memory", ask).contribution), CONTRIBUTION_COLUMNS)


@memory.command()
@click.argument("text", default="")
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=0.0)
@click.option("--type", "contribution_type", default="", help="Only this kind of knowledge.")
@click.option("--domain", "domain_id", default="", help="Only this domain's contributions.")
@click.option("--tag", "tags", multiple=True, help="Only contributions with this tag.")
@click.option(
    "--limit", type=click.IntRange(1, MAX_RESULTS), default=DEFAULT_RESULTS, show_default=True
)
@common_options
def query(
    text: str,
    min_confidence: float,
    contribution_type: str,
    domain_id: str,
    tags: tuple[str, ...],
    limit: int,
) -> None:
    """Search shared memory for TEXT, best first."""
    s = session()

    async def ask(chan: grpc.aio.Channel) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        token = ""
        while len(found) < limit:
            page = await _stub(chan).Query(
                memory_pb2.QueryRequest(
                    query=text,
                    min_confidence=min_confidence,
                    contribution_type=contribution_type,
                    domain_id=domain_id,
                    tags=list(tags),
                    page_size=min(PAGE_SIZE, limit - len(found)),
                    page_token=token,
                ),
                timeout=CALL_TIMEOUT_S,
            )
            found.extend(to_data(r) for r in page.results)
            token = page.next_page_token
            if not token:
                break
        return found[:limit]

    s.printer.items(
        s.call("memory", ask),
        [
            Column("SCORE", lambda r: f"{float(r.get('score', 0)):.3f}"),
            *(_of_contribution(c) for c in CONTRIBUTION_COLUMNS),
        ],
    )


def _of_contribution(column: Column) -> Column:
    """A contribution column read from a query result's `contribution`."""

    def value(result: Mapping[str, Any]) -> object:
        return column.value(result.get("contribution", {}))

    return Column(column.header, value)


@memory.command()
@click.argument("contribution_id")
@common_options
def show(contribution_id: str) -> None:
    """Show a contribution with its verdicts and recent applications."""
    s = session()

    async def ask(chan: grpc.aio.Channel) -> memory_pb2.GetContributionResponse:
        return await _stub(chan).GetContribution(
            memory_pb2.GetContributionRequest(contribution_id=contribution_id),
            timeout=CALL_TIMEOUT_S,
        )

    found = to_data(s.call("memory", ask))
    if not s.printer.is_table:
        s.printer.data(found)
        return
    s.printer.record(
        found["contribution"],
        [
            *CONTRIBUTION_COLUMNS,
            Column("INITIAL CONFIDENCE", path("initial_confidence")),
            Column("APPLIED OK", path("successful_applications")),
            Column("APPLIED FAILED", path("failed_applications")),
            Column("RETRACTED", path("retracted")),
            Column("CREATED", path("created_at")),
        ],
    )
    if found.get("verdicts"):
        s.printer.line("")
        s.printer.items(
            found["verdicts"],
            [
                Column("VERDICT", path("kind", "VERDICT_KIND_"), styled=True),
                Column("BY", path("domain_id")),
                Column("REASON", path("reason")),
                Column("TIME", path("time")),
            ],
        )
