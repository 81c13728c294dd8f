"""Configuration of the trigger mesh.

Besides the common server settings (see `services.common.config`):

Rules: `GRACE_TRIGGERS_RULES_FILE` (a TOML file of `[[rules]]` tables, see `rules_file`;
loaded at every start, a changed rule becomes its next version), `GRACE_TRIGGERS_SUBSCRIBE`
(true: push subscriptions on the bus to the rules' patterns).

Firings: `GRACE_TRIGGERS_LEASE_S` (60), `GRACE_TRIGGERS_POLL_INTERVAL_S` (1),
`GRACE_TRIGGERS_BATCH` (200), `GRACE_TRIGGERS_MAX_CONCURRENT` (32),
`GRACE_TRIGGERS_RETRY_INITIAL_S` (1), `GRACE_TRIGGERS_RETRY_MAX_S` (60),
`GRACE_TRIGGERS_ACTION_TIMEOUT_S` (30), `GRACE_TRIGGERS_TRUST_CACHE_S` (5: how long a
source's trust score is reused), `GRACE_TRIGGERS_GOVERNANCE_FALLBACK` (enforce),
`GRACE_TRIGGERS_GOVERNANCE_DEADLINE_S` (2).

Peers: `GRACE_REGISTRY_ADDR`, `GRACE_EVENTBUS_ADDR`, `GRACE_ORCHESTRATOR_ADDR`,
`GRACE_GOVERNANCE_ADDR`, `GRACE_TRUST_ADDR`, `GRACE_IMMUTABLE_LOG_ADDR`;
`GRACE_TRIGGERS_REGISTER=false` skips registering as domain `triggers`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from services.common.backoff import Backoff
from services.common.config import DEFAULT_PORTS, EnvReader, ServerConfig, peer_address
from services.kernels.registration import DomainRegistration, registration_from_env
from services.kernels.triggers.mesh import MeshSettings

SERVICE = "triggers"
CAPABILITIES = ("triggers", "rules")
PEERS = ("registry", "eventbus", "orchestrator", "governance", "trust", "immutable_log")


@dataclass(frozen=True)
class TriggersConfig:
    """Everything the trigger mesh reads at start-up."""

    server: ServerConfig
    mesh: MeshSettings = field(default_factory=MeshSettings)
    rules_file: Path | None = None
    subscribe: bool = True
    action_timeout_s: float = 30.0
    trust_cache_s: float = 5.0
    governance_fallback: str = "enforce"
    governance_deadline_s: float = 2.0
    registration: DomainRegistration | None = None
    addresses: Mapping[str, str] = field(
        default_factory=lambda: {p: f"127.0.0.1:{DEFAULT_PORTS.get(p, 0)}" for p in PEERS}
    )
    relay_interval_s: float = 1.0

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, flags: argparse.Namespace | None = None
    ) -> TriggersConfig:
        """Reads the config from `env` (default os.environ) and parsed flags."""
        env = dict(os.environ if env is None else env)
        r = EnvReader(env)
        server = ServerConfig.from_env(SERVICE, DEFAULT_PORTS[SERVICE], env, flags)
        rules_file = r.raw("GRACE_TRIGGERS_RULES_FILE")
        return cls(
            server=server,
            mesh=MeshSettings(
                lease_s=r.number("GRACE_TRIGGERS_LEASE_S", 60.0, minimum=1, maximum=3600),
                poll_interval_s=r.number(
                    "GRACE_TRIGGERS_POLL_INTERVAL_S", 1.0, minimum=0.01, maximum=60
                ),
                batch=r.integer("GRACE_TRIGGERS_BATCH", 200, minimum=1, maximum=10_000),
                max_concurrent=r.integer(
                    "GRACE_TRIGGERS_MAX_CONCURRENT", 32, minimum=1, maximum=1024
                ),
                retry=Backoff(
                    initial_s=r.number(
                        "GRACE_TRIGGERS_RETRY_INITIAL_S", 1.0, minimum=0, maximum=3600
                    ),
                    max_s=r.number("GRACE_TRIGGERS_RETRY_MAX_S", 60.0, minimum=0, maximum=86400),
                    jitter=0.2,
                ),
            ),
            rules_file=Path(rules_file) if rules_file else None,
            subscribe=r.flag("GRACE_TRIGGERS_SUBSCRIBE", True),
            action_timeout_s=r.number(
                "GRACE_TRIGGERS_ACTION_TIMEOUT_S", 30.0, minimum=0.1, maximum=600
            ),
            trust_cache_s=r.number("GRACE_TRIGGERS_TRUST_CACHE_S", 5.0, minimum=0, maximum=3600),
            governance_fallback=r.choice(
                "GRACE_TRIGGERS_GOVERNANCE_FALLBACK", "enforce", ["log_only", "enforce"]
            ),
            governance_deadline_s=r.number(
                "GRACE_TRIGGERS_GOVERNANCE_DEADLINE_S", 2.0, minimum=0.05, maximum=60
            ),
            registration=registration_from_env(env, SERVICE, server.host, CAPABILITIES),
            addresses={p: peer_address(env, p) for p in PEERS},
            relay_interval_s=r.number(
                "GRACE_TRIGGERS_RELAY_INTERVAL_S", 1.0, minimum=0.01, maximum=60
            ),
        )
