"""Client channels to other Grace services, configured once for the whole code base."""

from __future__ import annotations

import grpc

from services.common import telemetry

# Client and server keepalive settings must agree, or the server answers GOAWAY
# "too_many_pings". Servers allow a ping every 10 s; clients ping every 30 s when idle.
#
# The server's allowance is the channel argument grpc core names
# GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, whose string is
# "grpc.http2.min_ping_interval_without_data_ms" (no "recv"). grpc ignores unknown keys
# silently: spelled after the macro, servers kept the default of 5 minutes, and every
# connection that stayed quiet for ~90 s met its third 30-second ping with GOAWAY.
CLIENT_KEEPALIVE_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_MIN_PING_INTERVAL_MS = 10_000


def server_keepalive_options(
    min_ping_interval_ms: int = SERVER_MIN_PING_INTERVAL_MS,
) -> list[tuple[str, int]]:
    """The keepalive policy of every Grace server: pings allowed without calls, at most one
    per `min_ping_interval_ms` without data, GOAWAY after the third ping that comes sooner."""
    return [
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", min_ping_interval_ms),
        ("grpc.http2.max_ping_strikes", 2),
    ]


SERVER_KEEPALIVE_OPTIONS = server_keepalive_options()


# gRPC waits 1 s (then longer) before it dials again after a refused connection. A client
# that expects its peer to start listening any moment (a health probe of a component that
# is starting) dials again after 50 ms instead.
FAST_RECONNECT_OPTIONS: list[tuple[str, int]] = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def channel(
    target: str,
    *,
    max_message_bytes: int = 4 * 1024 * 1024,
    fast_reconnect: bool = False,
) -> grpc.aio.Channel:
    """An insecure `grpc.aio` channel to `target`, traced when tracing is on.

    Args:
        target: `host:port` of the peer.
        max_message_bytes: Largest message sent or received.
        fast_reconnect: Dial again 50 ms after a refused connection (see
            FAST_RECONNECT_OPTIONS), not after gRPC's default 1 s.
    """
    options = [
        *CLIENT_KEEPALIVE_OPTIONS,
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        *(FAST_RECONNECT_OPTIONS if fast_reconnect else ()),
    ]
    return grpc.aio.insecure_channel(
        target, options=options, interceptors=telemetry.current().client_interceptors()
    )
