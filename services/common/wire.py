"""Protobuf wire encoding for replies built from messages that are already serialized.

A stream that sends stored messages (the event bus's Subscribe) would otherwise parse each
one, copy it into the reply and serialize the reply again. Protobuf's wire format lets a
repeated message field be written from its elements' bytes instead: each element is a
length-delimited record, `tag, length, bytes`, and a reader cannot tell the result from
what the protobuf runtime would have written for the same elements. The server then sends
the bytes through a response serializer that passes `bytes` through (`passthrough`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

_LENGTH_DELIMITED = 2
_VARINT = 0


def varint(value: int) -> bytes:
    """`value` (not negative) as a base-128 varint."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# Record headers (tag and length) already written, by field number and element length:
# a stream's elements mostly come in a few lengths. Bounded: emptied when full.
_headers: dict[int, dict[int, bytes]] = {}
_HEADERS_LIMIT = 4096


def repeated_message(number: int, elements: Sequence[bytes]) -> bytes:
    """The records of a repeated message field `number` whose elements are serialized."""
    headers = _headers.setdefault(number, {})
    # Each element's header looked up in C-level passes (map, not a Python loop: this runs
    # once per element sent); only the lengths not seen before are written here.
    lengths = list(map(len, elements))
    found = list(map(headers.get, lengths))
    if not all(found):
        tag = varint(number << 3 | _LENGTH_DELIMITED)
        for index, header in enumerate(found):
            if header is None:
                if len(headers) >= _HEADERS_LIMIT:
                    headers.clear()
                header = headers[lengths[index]] = tag + varint(lengths[index])
                found[index] = header
    parts = [b""] * (2 * len(elements))
    parts[0::2] = found  # type: ignore[assignment]  # every None was replaced just above
    parts[1::2] = elements
    return b"".join(parts)


def int_field(number: int, value: int) -> bytes:
    """A non-negative integer field (int32/int64/uint*) as its record; empty for 0, the
    default, which protobuf does not write either."""
    if not value:
        return b""
    return varint(number << 3 | _VARINT) + varint(value)


def passthrough(serialize: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """A response serializer that sends `bytes` as they are and serializes messages."""

    def serializer(response: Any) -> bytes:
        if type(response) is bytes:
            return response
        return serialize(response)

    return serializer
