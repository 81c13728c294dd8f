"""Commands that follow a server stream (`watch`, `tail`): print items as they come."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc

from services.cli.output import Column
from services.cli.session import Session, rpc_failure

Items = Callable[[grpc.aio.Channel], AsyncIterator[dict[str, Any]]]


def follow(
    s: Session,
    component: str,
    items: Items,
    columns: Sequence[Column],
    count: int | None = None,
) -> int:
    """Prints each item of the stream until `count` items, the stream's end or Ctrl-C.

    Ctrl-C is the normal way to stop following, so it ends the command with 0; a server
    that goes away ends it with the usual exit code (2). Returns how many were printed.
    """
    address = s.address(component)

    async def run() -> int:
        printed = 0
        async with s.channel(address) as chan:
            stream = items(chan)
            try:
                async for item in stream:
                    s.printer.stream_item(item, columns)
                    printed += 1
                    if count is not None and printed >= count:
                        break
            finally:
                await stream.aclose()  # type: ignore[attr-defined]
        return printed

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        return 0
    except grpc.aio.AioRpcError as exc:
        raise rpc_failure(component, address, exc) from None
