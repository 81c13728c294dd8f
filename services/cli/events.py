"""`grace events publish|tail|history|dead-letters|redeliver`: the event bus."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import click
import grpc
from google.protobuf import struct_pb2

from grace.eventbus.v1 import eventbus_pb2, eventbus_pb2_grpc
from services.cli.output import Column, path, to_data
from services.cli.session import CALL_TIMEOUT_S, common_options, parse_json_object, session
from services.cli.streams import follow

PAGE_SIZE = 500
DEFAULT_HISTORY = 100
MAX_HISTORY = 100_000

EVENT_COLUMNS = (
    Column("SEQ", path("sequence"), width=6),
    Column("TIME", path("time"), width=19),
    Column("TYPE", path("event_type"), width=24),
    Column("SOURCE", path("source_domain"), width=14),
    Column("SUBJECT", path("subject"), width=14),
    Column("DATA", path("data")),
)
DEAD_LETTER_COLUMNS = (
    Column("DEAD LETTER", path("dead_letter_id")),
    Column("SUBSCRIPTION", path("subscription_id")),
    Column("DOMAIN", path("domain_id")),
    Column("SEQ", path("event.sequence")),
    Column("TYPE", path("event.event_type")),
    Column("ATTEMPTS", path("attempts")),
    Column("FAILED AT", path("failed_at")),
    Column("REASON", path("reason")),
)


def register(cli: click.Group) -> None:
    """Adds `grace events`."""
    cli.add_command(events)


@click.group()
def events() -> None:
    """Events on the event bus."""


@events.command()
@click.argument("event_type")
@click.option(
    "-d",
    "--data",
    default="{}",
    metavar="JSON|@FILE",
    help="The event's data: a JSON object, or @FILE (@- reads stdin).",
)
@click.option("--source", "source_domain", default="", help="Source domain id.")
@click.option("--subject", default="", help="What the event is about.")
@click.option("--id", "event_id", default="", help="Event id (default: a new one); dedupes.")
@common_options
def publish(event_type: str, data: str, source_domain: str, subject: str, event_id: str) -> None:
    """Publish an event of EVENT_TYPE; prints its id and sequence."""
    s = session()
    payload = struct_pb2.Struct()
    payload.update(parse_json_object(data, "--data"))

    async def ask(chan: grpc.aio.Channel) -> eventbus_pb2.PublishResponse:
        return await eventbus_pb2_grpc.EventBusServiceStub(chan).Publish(
            eventbus_pb2.PublishRequest(
                id=event_id,
                event_type=event_type,
                source_domain=source_domain,
                subject=subject,
                data=payload,
            ),
            timeout=CALL_TIMEOUT_S,
        )

    result = to_data(s.call("eventbus", ask))
    if s.printer.is_table:
        note = " (duplicate: already stored)" if result.get("duplicate") else ""
        s.printer.line(f"published {result['id']} at sequence {result['sequence']}{note}")
    else:
        s.printer.data(result)


@events.command()
@click.argument("patterns", nargs=-1)
@click.option("--all", "from_start", is_flag=True, help="Start with every retained event.")
@click.option(
    "--after",
    "after_sequence",
    type=click.IntRange(0),
    help="Start after this sequence (as a reconnecting client would).",
)
@click.option("--source", "source_domain", default="", help="Only events of this source domain.")
@click.option("--count", type=click.IntRange(1), help="Stop after this many events.")
@common_options
def tail(
    patterns: tuple[str, ...],
    from_start: bool,
    after_sequence: int | None,
    source_domain: str,
    count: int | None,
) -> None:
    """Print events matching PATTERNS (default: all) as they are published; Ctrl-C stops.

    In a pattern `*` matches any run of characters: `ml.*` matches `ml.prediction`.
    """
    s = session()
    if after_sequence is not None:
        start = eventbus_pb2.START_POSITION_SEQUENCE
    elif from_start:
        start = eventbus_pb2.START_POSITION_ALL
    else:
        start = eventbus_pb2.START_POSITION_NEW

    async def items(chan: grpc.aio.Channel) -> AsyncIterator[dict[str, Any]]:
        stub = eventbus_pb2_grpc.EventBusServiceStub(chan)
        request = eventbus_pb2.SubscribeRequest(
            patterns=list(patterns) or ["*"],
            start=start,
            start_sequence=(after_sequence or 0) + 1 if after_sequence is not None else 0,
            source_domain=source_domain,
        )
        async for response in stub.Subscribe(request):
            for event in response.events:
                yield to_data(event)

    follow(s, "eventbus", items, EVENT_COLUMNS, count)


@events.command()
@click.option("--pattern", default="", help="Only event types matching this pattern.")
@click.option("--source", "source_domain", default="", help="Only events of this source domain.")
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_HISTORY),
    default=DEFAULT_HISTORY,
    show_default=True,
    help="At most this many events.",
)
@click.option("--newest-first", is_flag=True, help="Newest events first.")
@common_options
def history(pattern: str, source_domain: str, limit: int, newest_first: bool) -> None:
    """Search the stored events."""
    s = session()

    async def ask(chan: grpc.aio.Channel) -> list[dict[str, Any]]:
        stub = eventbus_pb2_grpc.EventBusServiceStub(chan)
        found: list[dict[str, Any]] = []
        token = ""
        while len(found) < limit:
            page = await stub.GetHistory(
                eventbus_pb2.GetHistoryRequest(
                    pattern=pattern,
                    source_domain=source_domain,
                    page_size=min(PAGE_SIZE, limit - len(found)),
                    page_token=token,
                    newest_first=newest_first,
                ),
                timeout=CALL_TIMEOUT_S,
            )
            found.extend(to_data(e) for e in page.events)
            token = page.next_page_token
            if not token:
                break
        return found[:limit]

    s.printer.items(s.call("eventbus", ask), EVENT_COLUMNS)


@events.command("dead-letters")
@click.option("--subscription", default="", help="Only this subscription's dead letters.")
@common_options
def dead_letters(subscription: str) -> None:
    """List events a subscription gave up delivering (`grace events redeliver` retries)."""
    s = session()

    async def ask(chan: grpc.aio.Channel) -> list[dict[str, Any]]:
        stub = eventbus_pb2_grpc.EventBusServiceStub(chan)
        found: list[dict[str, Any]] = []
        token = ""
        while True:
            page = await stub.ListDeadLetters(
                eventbus_pb2.ListDeadLettersRequest(
                    subscription_id=subscription, page_size=PAGE_SIZE, page_token=token
                ),
                timeout=CALL_TIMEOUT_S,
            )
            found.extend(to_data(d) for d in page.dead_letters)
            token = page.next_page_token
            if not token:
                return found

    s.printer.items(s.call("eventbus", ask), DEAD_LETTER_COLUMNS)


@events.command()
@click.argument("dead_letter_id")
@common_options
def redeliver(dead_letter_id: str) -> None:
    """Deliver a dead letter to its subscription again."""
    s = session()

    async def ask(chan: grpc.aio.Channel) -> eventbus_pb2.RedeliverDeadLetterResponse:
        return await eventbus_pb2_grpc.EventBusServiceStub(chan).RedeliverDeadLetter(
            eventbus_pb2.RedeliverDeadLetterRequest(dead_letter_id=dead_letter_id),
            timeout=CALL_TIMEOUT_S,
        )

    s.printer.record(to_data(s.call("eventbus", ask).dead_letter), DEAD_LETTER_COLUMNS)
