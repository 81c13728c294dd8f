"""Client channels to other Grace services, configured once for the whole code base.

A secure process calls `configure` once at start-up (GraceServer does it from its config,
the CLI from the data dir). From then on every `channel()` is TLS, verifies the server
against the Grace CA (checking the name `grace.local` that every Grace certificate
carries), presents the process's own certificate (mTLS) and/or sends its bearer token.
Renewed certificate files are picked up by the next channel made; an existing connection
keeps the identity it was established with.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from services.common import telemetry
from services.common.pki import SERVER_NAME

if TYPE_CHECKING:
    from services.common.config import SecurityConfig

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


@dataclass(frozen=True)
class ClientSecurity:
    """How this process authenticates to Grace servers.

    Attributes:
        ca_file: The Grace CA bundle servers are verified against.
        cert_file: This process's certificate for mTLS (None: token only).
        key_file: Its private key.
        token: A bearer token sent with every call (None: certificate only).
    """

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    token: str | None = None

    @classmethod
    def of_process(cls, security: SecurityConfig) -> ClientSecurity:
        """A server process's client side: its own certificate."""
        return cls(security.ca_file, security.cert_file, security.key_file)


class _Credentials:
    """Channel credentials built from files, rebuilt when the certificate changes."""

    def __init__(self, security: ClientSecurity) -> None:
        self.security = security
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._credentials: grpc.ChannelCredentials | None = None

    def _stamp_now(self) -> tuple[int, int]:
        path = self.security.cert_file or self.security.ca_file
        stat = path.stat()
        return stat.st_mtime_ns, stat.st_size

    def get(self) -> grpc.ChannelCredentials:
        with self._lock:
            stamp = self._stamp_now()
            if self._credentials is None or stamp != self._stamp:
                s = self.security
                ssl = grpc.ssl_channel_credentials(
                    root_certificates=s.ca_file.read_bytes(),
                    private_key=s.key_file.read_bytes() if s.key_file else None,
                    certificate_chain=s.cert_file.read_bytes() if s.cert_file else None,
                )
                if s.token:
                    ssl = grpc.composite_channel_credentials(
                        ssl, grpc.access_token_call_credentials(s.token)
                    )
                self._credentials, self._stamp = ssl, stamp
            return self._credentials


_configured: _Credentials | None = None


def configure(security: ClientSecurity | None) -> None:
    """Sets how every later `channel()` of this process authenticates (None: plaintext)."""
    global _configured
    _configured = None if security is None else _Credentials(security)


def configured() -> ClientSecurity | None:
    """The process's client security, or None in insecure mode."""
    return None if _configured is None else _configured.security


def channel(
    target: str,
    *,
    max_message_bytes: int = 4 * 1024 * 1024,
    fast_reconnect: bool = False,
    security: ClientSecurity | None = None,
) -> grpc.aio.Channel:
    """A `grpc.aio` channel to `target`, traced when tracing is on.

    TLS with the process's credentials once `configure` was called (or with `security`
    when given), plaintext otherwise.

    Args:
        target: `host:port` of the peer.
        max_message_bytes: Largest message sent or received.
        fast_reconnect: Dial again 50 ms after a refused connection (see
            FAST_RECONNECT_OPTIONS), not after gRPC's default 1 s.
        security: Credentials for this channel instead of the process's.
    """
    options: list[tuple[str, int | str]] = [
        *CLIENT_KEEPALIVE_OPTIONS,
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        *(FAST_RECONNECT_OPTIONS if fast_reconnect else ()),
    ]
    interceptors = telemetry.current().client_interceptors()
    credentials = _Credentials(security) if security is not None else _configured
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    options.append(("grpc.ssl_target_name_override", SERVER_NAME))
    return grpc.aio.secure_channel(
        target, credentials.get(), options=options, interceptors=interceptors
    )
