"""Who is calling: the caller's host as a server sees it."""

from __future__ import annotations

from typing import Any

import grpc


def caller_host(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The caller's host: the first X-Forwarded-For address when the call came through the
    gateway, otherwise the peer address of the connection ("127.0.0.1", "::1")."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-forwarded-for" and isinstance(value, str) and value.strip():
            return value.split(",")[0].strip()
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return "127.0.0.1"
