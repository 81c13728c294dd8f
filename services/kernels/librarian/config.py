"""Configuration of the librarian kernel.

Besides the common server settings (see `services.common.config`):

- `GRACE_LIBRARIAN_SUBSCRIBE` (true): index what flows through Grace, by push
  subscriptions on the event bus to `GRACE_LIBRARIAN_PATTERNS` (comma-separated; default
  `data.ingested,data.deleted,memory.contributed,memory.retracted,workflow.completed`, see
  `intake`).
- `GRACE_LIBRARIAN_HTTP` (true): also answer plain HTTP/1.1 on the kernel's port
  (`GET /health`, `GET /search?query=`, `GET /stats`; see `front`), beside gRPC.
- Peers: `GRACE_EVENTBUS_ADDR`, `GRACE_MEMORY_ADDR` (contributions are read back from
  it), `GRACE_ORCHESTRATOR_ADDR` (workflow outputs), `GRACE_REGISTRY_ADDR`;
  `GRACE_LIBRARIAN_REGISTER=false` skips registering as domain `librarian` (see
  `services.kernels.registration`).
- `GRACE_LIBRARIAN_RELAY_INTERVAL_S` (1): how often the outbox relay polls when idle.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass

from services.common.config import (
    DEFAULT_PORTS,
    ConfigError,
    EnvReader,
    ServerConfig,
    peer_address,
)
from services.common.errors import InvalidArgument
from services.common.patterns import validate_pattern
from services.kernels.librarian.intake import DEFAULT_PATTERNS
from services.kernels.registration import DomainRegistration, registration_from_env

SERVICE = "librarian"
CAPABILITIES = ("search", "indexing", "knowledge")
MAX_PATTERNS = 32


@dataclass(frozen=True)
class LibrarianConfig:
    """Everything the librarian server reads at start-up."""

    server: ServerConfig
    subscribe: bool = True
    patterns: tuple[str, ...] = DEFAULT_PATTERNS
    http: bool = True
    registration: DomainRegistration | None = None
    eventbus_address: str = f"127.0.0.1:{DEFAULT_PORTS['eventbus']}"
    memory_address: str = f"127.0.0.1:{DEFAULT_PORTS['memory']}"
    orchestrator_address: str = f"127.0.0.1:{DEFAULT_PORTS['orchestrator']}"
    relay_interval_s: float = 1.0

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, flags: argparse.Namespace | None = None
    ) -> LibrarianConfig:
        """Reads the config from `env` (default os.environ) and parsed flags."""
        env = dict(os.environ if env is None else env)
        r = EnvReader(env)
        server = ServerConfig.from_env(SERVICE, DEFAULT_PORTS[SERVICE], env, flags)
        text = r.raw("GRACE_LIBRARIAN_PATTERNS")
        patterns: tuple[str, ...] = DEFAULT_PATTERNS
        if text is not None:
            patterns = tuple(p.strip() for p in text.split(",") if p.strip())
            if len(patterns) > MAX_PATTERNS:
                raise ConfigError(f"GRACE_LIBRARIAN_PATTERNS: at most {MAX_PATTERNS} patterns")
            for pattern in patterns:
                try:
                    validate_pattern(pattern)
                except InvalidArgument as exc:
                    raise ConfigError(f"GRACE_LIBRARIAN_PATTERNS={text!r}: {exc.message}") from None
        return cls(
            server=server,
            subscribe=r.flag("GRACE_LIBRARIAN_SUBSCRIBE", True),
            patterns=patterns,
            http=r.flag("GRACE_LIBRARIAN_HTTP", True),
            registration=registration_from_env(env, SERVICE, server.host, CAPABILITIES),
            eventbus_address=peer_address(env, "eventbus"),
            memory_address=peer_address(env, "memory"),
            orchestrator_address=peer_address(env, "orchestrator"),
            relay_interval_s=r.number(
                "GRACE_LIBRARIAN_RELAY_INTERVAL_S", 1.0, minimum=0.01, maximum=60
            ),
        )
