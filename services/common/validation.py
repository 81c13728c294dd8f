"""Checks on what clients send, shared by every servicer. Each failure is an
`InvalidArgument` naming the field and the rule."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from google.protobuf import struct_pb2

from services.common.errors import InvalidArgument

# Ids of domains, subscriptions, workflows...: letters, digits, '_', '-', '.', starting
# with a letter or digit.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
MAX_ID_LENGTH = 128
DEFAULT_MAX_STRUCT_BYTES = 1024 * 1024


def require_id(
    field: str,
    value: str,
    *,
    max_length: int = MAX_ID_LENGTH,
    pattern: re.Pattern[str] = ID_PATTERN,
) -> str:
    """An id that is present, not too long and in the alphabet."""
    if not value:
        raise InvalidArgument(field, "is required")
    if len(value) > max_length:
        raise InvalidArgument(field, f"must be at most {max_length} characters")
    if not pattern.fullmatch(value):
        raise InvalidArgument(
            field, f"must match {pattern.pattern} (letters, digits, '_', '-', '.')"
        )
    return value


def require_text(field: str, value: str, *, max_length: int, required: bool = False) -> str:
    """A free-form string within a length."""
    if required and not value:
        raise InvalidArgument(field, "is required")
    if len(value) > max_length:
        raise InvalidArgument(field, f"must be at most {max_length} characters")
    return value


def require_range(field: str, value: float, *, minimum: float, maximum: float) -> float:
    """A number within [minimum, maximum]."""
    if not minimum <= value <= maximum:
        raise InvalidArgument(field, f"must be between {minimum:g} and {maximum:g}")
    return value


def require_unique_ids(
    field: str,
    values: Sequence[str],
    *,
    max_count: int,
    max_length: int,
    pattern: re.Pattern[str] = ID_PATTERN,
) -> list[str]:
    """A list of ids: bounded count, each valid, duplicates dropped (order kept)."""
    if len(values) > max_count:
        raise InvalidArgument(field, f"must have at most {max_count} entries")
    seen: dict[str, None] = {}
    for index, value in enumerate(values):
        require_id(f"{field}[{index}]", value, max_length=max_length, pattern=pattern)
        seen.setdefault(value, None)
    return list(seen)


def require_string_map(
    field: str,
    values: Mapping[str, str],
    *,
    max_entries: int,
    max_key_length: int,
    max_value_length: int,
) -> dict[str, str]:
    """A string map with bounded entries, key and value lengths."""
    if len(values) > max_entries:
        raise InvalidArgument(field, f"must have at most {max_entries} entries")
    for key, value in values.items():
        if not key or len(key) > max_key_length:
            raise InvalidArgument(
                f"{field}[{key[:32]!r}]", f"key must be 1-{max_key_length} characters"
            )
        if len(value) > max_value_length:
            raise InvalidArgument(
                f"{field}[{key!r}]", f"must be at most {max_value_length} characters"
            )
    return dict(values)


def require_struct_size(
    field: str, value: struct_pb2.Struct, *, max_bytes: int = DEFAULT_MAX_STRUCT_BYTES
) -> struct_pb2.Struct:
    """A Struct payload whose serialized size is within the limit (default 1 MiB)."""
    size = value.ByteSize()
    if size > max_bytes:
        raise InvalidArgument(field, f"is {size} bytes; the limit is {max_bytes}")
    return value
