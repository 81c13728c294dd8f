"""Page sizes, byte budgets and opaque page tokens, the same for every list RPC and stream.

A token is URL-safe base64 of a small JSON object holding the key to resume after
(keyset pagination): stable under concurrent inserts, and no offset scans.

A page is bounded by bytes as well as by count: 1000 executions or a few events of 1 MiB
each make a reply larger than gRPC's message limit (4 MiB), which the server cannot send
(RESOURCE_EXHAUSTED) and a client would ask for again, forever. `take_page` cuts a page at
`MAX_PAGE_BYTES` of encoded items (the page then ends early, with a next token like any
other), and `byte_batches` cuts a stream's batch the same way. The first item always goes
in, so a page never comes back empty while items remain: every stored item is smaller than
the budget, because requests are bounded well below it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from google.protobuf.message import Message

from services.common.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# Encoded items per reply: a quarter of the default 4 MiB message limit is left for the
# rest of the reply (tokens, counts) and for the JSON the gateway makes of it.
MAX_PAGE_BYTES = 3 * 1024 * 1024
_MAX_TOKEN_LENGTH = 1024

T = TypeVar("T")


def encoded_size(message: Message) -> int:
    """Bytes `message` takes as an element of a repeated field: tag, length and body."""
    body = message.ByteSize()
    return 2 + _varint_length(body) + body


def _varint_length(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def page_size(requested: int, *, field: str = "page_size") -> int:
    """The effective page size: 0 means the default; negative or above the maximum is an error."""
    if requested < 0:
        raise InvalidArgument(field, "must not be negative")
    if requested > MAX_PAGE_SIZE:
        raise InvalidArgument(field, f"must be at most {MAX_PAGE_SIZE}")
    return requested or DEFAULT_PAGE_SIZE


def encode_token(position: dict[str, Any]) -> str:
    """An opaque token for the position after the last item of a page."""
    raw = json.dumps(position, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, *, field: str = "page_token") -> dict[str, Any] | None:
    """The position a token stands for; None for an empty token (the first page)."""
    if not token:
        return None
    if len(token) > _MAX_TOKEN_LENGTH:
        raise InvalidArgument(field, "is too long")
    try:
        padded = token + "=" * (-len(token) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidArgument(field, "is not a token this service issued") from None
    if not isinstance(value, dict):
        raise InvalidArgument(field, "is not a token this service issued")
    return value


def take_page(
    items: Sequence[T],
    limit: int,
    size_of: Callable[[T], int],
    *,
    max_bytes: int = MAX_PAGE_BYTES,
) -> tuple[list[T], bool]:
    """The page to return from `items` (in page order, usually `limit + 1` fetched).

    Args:
        items: Candidates in the order of the page.
        limit: The page size in items.
        size_of: Encoded size of one item in the reply (`encoded_size` of its message).
        max_bytes: The byte budget of the page.

    Returns:
        The longest prefix within `limit` items and `max_bytes` (at least one item when
        there are any), and whether items remain after it (a next token is due).
    """
    page: list[T] = []
    used = 0
    for item in items[:limit]:
        size = size_of(item)
        if page and used + size > max_bytes:
            break
        page.append(item)
        used += size
    return page, len(page) < len(items)


# What `encoded_size` adds to a message's length at most: 2 plus a length of at most 10
# bytes (the longest varint).
_MAX_RECORD_OVERHEAD = 12


def byte_batches(encoded: Sequence[bytes], *, max_bytes: int = MAX_PAGE_BYTES) -> Iterator[slice]:
    """Splits a stream's batch of serialized messages, in order, into slices of at most
    `max_bytes` as elements of a repeated field (a message larger than that goes alone)."""
    # Most batches fit whole: their lengths' sum, plus the most that `encoded_size` adds to
    # a length, says so in one C-level pass instead of a Python one per message.
    if sum(map(len, encoded)) + _MAX_RECORD_OVERHEAD * len(encoded) <= max_bytes:
        if encoded:
            yield slice(0, len(encoded))
        return
    start = 0
    used = 0
    for index, message in enumerate(encoded):
        body = len(message)
        # encoded_size, inlined: this runs once per event a stream sends.
        size = 2 + max(1, (body.bit_length() + 6) // 7) + body
        if index > start and used + size > max_bytes:
            yield slice(start, index)
            start, used = index, 0
        used += size
    if start < len(encoded):
        yield slice(start, len(encoded))
