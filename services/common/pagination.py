"""Page sizes and opaque page tokens, the same for every list RPC.

A token is URL-safe base64 of a small JSON object holding the key to resume after
(keyset pagination): stable under concurrent inserts, and no offset scans.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from services.common.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_MAX_TOKEN_LENGTH = 1024


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
