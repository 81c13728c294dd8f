"""Configuration of the registry server.

Besides the common server settings (see `services.common.config`):

- `GRACE_REGISTRY_LEASE_TTL_S`: default lease length (30).
- `GRACE_REGISTRY_DEREGISTER_AFTER_S`: how long a lapsed domain stays UNHEALTHY before it
  is removed (300, like Consul's deregister_critical_service_after).
- `GRACE_REGISTRY_SWEEP_INTERVAL_S`: how often leases are checked (1).
- `GRACE_REGISTRY_WATCH_HISTORY`: changes kept for watches to resume from (10000).
- `GRACE_FEDERATION_OBSERVERS`: observers per member in the health federation (3); the
  members read the same variable.
- `GRACE_FEDERATION_QUORUM`: confirmations that declare a suspect down (0: a majority of
  its observers); never fewer than `GRACE_FEDERATION_MIN_QUORUM` (2).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.common.config import DEFAULT_PORTS, EnvReader, ServerConfig
from services.common.observers import DEFAULT_OBSERVERS, MIN_QUORUM
from services.registry.federation import FederationSettings
from services.registry.registry import RegistrySettings
from services.registry.validation import MAX_LEASE_TTL_S, MIN_LEASE_TTL_S

SERVICE = "registry"


@dataclass(frozen=True)
class RegistryConfig:
    """Everything the registry server reads at start-up."""

    server: ServerConfig
    settings: RegistrySettings
    sweep_interval_s: float = 1.0
    federation: FederationSettings = field(default_factory=FederationSettings)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, flags: argparse.Namespace | None = None
    ) -> RegistryConfig:
        """Reads the config from `env` (default os.environ) and parsed flags."""
        env = dict(os.environ if env is None else env)
        reader = EnvReader(env)
        return cls(
            server=ServerConfig.from_env(SERVICE, DEFAULT_PORTS[SERVICE], env, flags),
            settings=RegistrySettings(
                default_lease_ttl_s=reader.number(
                    "GRACE_REGISTRY_LEASE_TTL_S",
                    30.0,
                    minimum=MIN_LEASE_TTL_S,
                    maximum=MAX_LEASE_TTL_S,
                ),
                deregister_after_s=reader.number(
                    "GRACE_REGISTRY_DEREGISTER_AFTER_S", 300.0, minimum=0, maximum=30 * 86400
                ),
                history=reader.integer(
                    "GRACE_REGISTRY_WATCH_HISTORY", 10_000, minimum=100, maximum=1_000_000
                ),
            ),
            sweep_interval_s=reader.number(
                "GRACE_REGISTRY_SWEEP_INTERVAL_S", 1.0, minimum=0.05, maximum=60
            ),
            federation=FederationSettings(
                observers=reader.integer(
                    "GRACE_FEDERATION_OBSERVERS", DEFAULT_OBSERVERS, minimum=1, maximum=16
                ),
                quorum=reader.integer("GRACE_FEDERATION_QUORUM", 0, minimum=0, maximum=16),
                min_quorum=reader.integer(
                    "GRACE_FEDERATION_MIN_QUORUM", MIN_QUORUM, minimum=1, maximum=16
                ),
            ),
        )
