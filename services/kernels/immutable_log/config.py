"""Configuration of the immutable log kernel.

Besides the common server settings (see `services.common.config`):

- `GRACE_IMMUTABLE_LOG_ORIGIN`: checkpoint origin line and key name
  (default `grace.local/immutable-log`).
- `GRACE_IMMUTABLE_LOG_KEY_FILE`: the Ed25519 signing key (PEM), created on first start
  (default `<data dir>/immutable_log.key`; the public key is written next to it as `.pub`).
- `GRACE_IMMUTABLE_LOG_MAX_BATCH`: most entries per group commit (20000).
- `GRACE_IMMUTABLE_LOG_REGISTER`: register in the registry as a domain (true);
  `GRACE_IMMUTABLE_LOG_ADVERTISE_HOST`, `GRACE_IMMUTABLE_LOG_LEASE_TTL_S`,
  `GRACE_REGISTRY_ADDR` tune it.
- `GRACE_IMMUTABLE_LOG_SUBSCRIBE`: create push subscriptions on the event bus at
  `GRACE_EVENTBUS_ADDR` for the events the log records (true; needs the registration, since
  the bus finds the log through the registry).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common.config import DEFAULT_PORTS, EnvReader, ServerConfig, peer_address
from services.kernels.immutable_log.log import LogSettings
from services.kernels.registration import DomainRegistration, registration_from_env

SERVICE = "immutable_log"
CAPABILITIES = ("immutable_log", "audit", "merkle_proofs")


@dataclass(frozen=True)
class LogConfig:
    """Everything the immutable log server reads at start-up.

    Attributes:
        eventbus_address: The bus to subscribe on; "" subscribes to nothing.
    """

    server: ServerConfig
    settings: LogSettings
    key_file: Path
    registration: DomainRegistration | None
    eventbus_address: str = ""

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, flags: argparse.Namespace | None = None
    ) -> LogConfig:
        """Reads the config from `env` (default os.environ) and parsed flags."""
        env = dict(os.environ if env is None else env)
        reader = EnvReader(env)
        server = ServerConfig.from_env(SERVICE, DEFAULT_PORTS[SERVICE], env, flags)
        return cls(
            server=server,
            settings=LogSettings(
                origin=reader.text("GRACE_IMMUTABLE_LOG_ORIGIN", "grace.local/immutable-log"),
                max_batch_entries=reader.integer(
                    "GRACE_IMMUTABLE_LOG_MAX_BATCH", 20_000, minimum=1, maximum=1_000_000
                ),
            ),
            key_file=Path(
                reader.text("GRACE_IMMUTABLE_LOG_KEY_FILE", str(server.data_dir / f"{SERVICE}.key"))
            ),
            registration=registration_from_env(env, SERVICE, server.host, CAPABILITIES),
            eventbus_address=(
                peer_address(env, "eventbus")
                if reader.flag("GRACE_IMMUTABLE_LOG_SUBSCRIBE", True)
                else ""
            ),
        )
