"""Configuration of the gateway.

- `GRACE_GATEWAY_HOST` / `--host`, `GRACE_GATEWAY_PORT` / `--port`: where it listens
  (127.0.0.1:8000).
- `GRACE_<COMPONENT>_ADDR`: each upstream's address (default 127.0.0.1 and its default port).
- `GRACE_GATEWAY_TIMEOUT_S`: deadline of a unary call when the client sends no
  `grpc-timeout` or `X-Request-Timeout` header (30).
- `GRACE_GATEWAY_MAX_TIMEOUT_S`: largest deadline a client may ask for (300).
- `GRACE_GATEWAY_MAX_BODY_BYTES`: largest request body, 413 beyond (4 MiB).
- `GRACE_GATEWAY_BODY_IDLE_S`: how long the gateway waits for the next bytes of a request
  body before answering 400 (a Content-Length larger than the body sent) (5).
- `GRACE_GATEWAY_HEALTH_TIMEOUT_S`: deadline of each upstream health and stats call of
  /domains/system/health and /domains/system/overview (2).
- `GRACE_GATEWAY_STREAM_FIRST_WAIT_S`: how long a streaming route waits for the upstream's
  first message before it commits to a 200 (so early errors still get their HTTP status) (1).
- `GRACE_IMMUNE_ADDR`: the immune kernel, sent each upstream's call latency and errors
  (metrics `gateway_latency_ms`, `gateway_errors`, `gateway_error_rate`) every
  `GRACE_GATEWAY_METRICS_INTERVAL_S` (5); `off` stops reporting.
- `GRACE_GATEWAY_CORS_ORIGINS`: comma-separated origins a browser page may call the gateway
  from (`https://console.example.com,http://localhost:5173`; `*` for any); empty (the
  default) sends no CORS headers, so browsers allow same-origin pages only.
- `GRACE_GATEWAY_SSE_PING_S`: seconds between two `: ping` comments on an idle
  Server-Sent Events stream (15; 0 sends none).
- `GRACE_GATEWAY_PROTO_ROOT`: directory of the `.proto` files whose comments document
  /openapi.json (the project's `protos/`, or the copy a wheel installs).
- `GRACE_SHUTDOWN_GRACE_S`, `GRACE_MAX_MESSAGE_BYTES`: as for every server.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.common.codegen import installed_proto_root
from services.common.config import (
    DEFAULT_PORTS,
    ConfigError,
    EnvReader,
    SecurityConfig,
    ServerConfig,
    peer_address,
    server_flag_parser,
)

SERVICE = "gateway"


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway reads at start-up.

    Attributes:
        host: Interface to bind.
        port: Port to bind; 0 picks a free one.
        default_timeout_s: Deadline of unary calls without a timeout header.
        max_timeout_s: Cap on client-requested deadlines.
        max_body_bytes: Largest accepted request body.
        body_idle_s: Longest pause while a request body arrives before a 400.
        health_timeout_s: Deadline of each call of the aggregation routes.
        stream_first_wait_s: Wait for a stream's first message before answering 200.
        shutdown_grace_s: Time in-flight requests get at shutdown.
        max_message_bytes: Largest gRPC message.
        proto_root: Where the .proto files are read for API comments (None: no comments).
        immune_addr: Immune kernel `host:port` for call metrics; "" reports none.
        metrics_interval_s: Time between two reports of call metrics.
        cors_origins: Origins allowed to call from a browser ("*" for any); empty: none.
        sse_ping_s: Seconds between keep-alive comments on an idle SSE stream; 0: none.
        security: HTTPS with the gateway's certificate and bearer-token authentication
            of every route but /healthz; None serves plain HTTP to anyone (insecure).
        env: The environment, for upstream addresses.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORTS[SERVICE]
    default_timeout_s: float = 30.0
    max_timeout_s: float = 300.0
    max_body_bytes: int = 4 * 1024 * 1024
    body_idle_s: float = 5.0
    health_timeout_s: float = 2.0
    stream_first_wait_s: float = 1.0
    shutdown_grace_s: float = 5.0
    max_message_bytes: int = 4 * 1024 * 1024
    proto_root: Path | None = field(default_factory=installed_proto_root)
    immune_addr: str = ""
    metrics_interval_s: float = 5.0
    cors_origins: tuple[str, ...] = ()
    sse_ping_s: float = 15.0
    security: SecurityConfig | None = None
    env: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, flags: argparse.Namespace | None = None
    ) -> GatewayConfig:
        """Reads the config from `env` (default os.environ) and parsed flags."""
        env = dict(os.environ if env is None else env)
        reader = EnvReader(env)
        server = ServerConfig.from_env(SERVICE, DEFAULT_PORTS[SERVICE], env, flags)
        installed = installed_proto_root()
        proto_text = reader.text("GRACE_GATEWAY_PROTO_ROOT", str(installed or ""))
        proto_root = Path(proto_text) if proto_text else None
        immune = peer_address(env, "immune").strip()
        return cls(
            host=server.host,
            port=server.port,
            default_timeout_s=reader.number(
                "GRACE_GATEWAY_TIMEOUT_S", 30.0, minimum=0.001, maximum=3600
            ),
            max_timeout_s=reader.number(
                "GRACE_GATEWAY_MAX_TIMEOUT_S", 300.0, minimum=0.001, maximum=86400
            ),
            max_body_bytes=reader.integer(
                "GRACE_GATEWAY_MAX_BODY_BYTES", 4 * 1024 * 1024, minimum=1024, maximum=1 << 30
            ),
            body_idle_s=reader.number("GRACE_GATEWAY_BODY_IDLE_S", 5.0, minimum=0.01, maximum=600),
            health_timeout_s=reader.number(
                "GRACE_GATEWAY_HEALTH_TIMEOUT_S", 2.0, minimum=0.01, maximum=60
            ),
            stream_first_wait_s=reader.number(
                "GRACE_GATEWAY_STREAM_FIRST_WAIT_S", 1.0, minimum=0, maximum=60
            ),
            shutdown_grace_s=server.shutdown_grace_s,
            max_message_bytes=server.max_message_bytes,
            proto_root=proto_root if proto_root is not None and proto_root.is_dir() else None,
            immune_addr="" if immune.lower() == "off" else immune,
            metrics_interval_s=reader.number(
                "GRACE_GATEWAY_METRICS_INTERVAL_S", 5.0, minimum=0.05, maximum=3600
            ),
            cors_origins=_origins(reader.text("GRACE_GATEWAY_CORS_ORIGINS", "")),
            sse_ping_s=reader.number("GRACE_GATEWAY_SSE_PING_S", 15.0, minimum=0, maximum=3600),
            security=server.security,
            env=env,
        )


def _origins(text: str) -> tuple[str, ...]:
    """The allowed origins of GRACE_GATEWAY_CORS_ORIGINS, each `scheme://host[:port]` or `*`.

    Raises:
        ConfigError: An origin with a path, or without a scheme.
    """
    origins: list[str] = []
    for raw in text.split(","):
        origin = raw.strip().rstrip("/")
        if not origin:
            continue
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            raise ConfigError(
                f"GRACE_GATEWAY_CORS_ORIGINS: {origin!r} is not an origin "
                "(scheme://host[:port], or *)"
            )
        origins.append(origin)
    return tuple(dict.fromkeys(origins))


def flag_parser() -> argparse.ArgumentParser:
    """The gateway's command-line flags (the common server flags)."""
    parser = server_flag_parser(SERVICE)
    parser.prog = "python -m gateway"
    parser.description = "Grace REST gateway"
    return parser
