"""Configuration of the shared memory server.

Besides the common server settings (see `services.common.config`):

- `GRACE_MEMORY_DEFAULT_CONFIDENCE`: initial confidence of a contribution that gives none
  (0.5).
- `GRACE_MEMORY_MAX_CONTENT_BYTES`: largest contribution content, as compact JSON (1 MiB).
- `GRACE_MEMORY_WATCH_BUFFER`: changes a watch stream may fall behind before it is cut
  off (10000).
- `GRACE_EVENTBUS_ADDR`: the event bus that announcements go to (127.0.0.1:8100).
- `GRACE_MEMORY_RELAY_INTERVAL_S`: how often the outbox relay looks for events when not
  woken (1); it backs off up to 30 s while the bus is down.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass

from services.common.config import DEFAULT_PORTS, EnvReader, ServerConfig, peer_address
from services.memory.memory import MemorySettings

SERVICE = "memory"


@dataclass(frozen=True)
class MemoryConfig:
    """Everything the shared memory server reads at start-up."""

    server: ServerConfig
    settings: MemorySettings
    eventbus_address: str = f"127.0.0.1:{DEFAULT_PORTS['eventbus']}"
    relay_interval_s: float = 1.0

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, flags: argparse.Namespace | None = None
    ) -> MemoryConfig:
        """Reads the config from `env` (default os.environ) and parsed flags."""
        env = dict(os.environ if env is None else env)
        reader = EnvReader(env)
        return cls(
            server=ServerConfig.from_env(SERVICE, DEFAULT_PORTS[SERVICE], env, flags),
            settings=MemorySettings(
                default_confidence=reader.number(
                    "GRACE_MEMORY_DEFAULT_CONFIDENCE", 0.5, minimum=0.0, maximum=1.0
                ),
                max_content_bytes=reader.integer(
                    "GRACE_MEMORY_MAX_CONTENT_BYTES",
                    1024 * 1024,
                    minimum=1024,
                    maximum=64 * 1024 * 1024,
                ),
                watch_buffer=reader.integer(
                    "GRACE_MEMORY_WATCH_BUFFER", 10_000, minimum=10, maximum=1_000_000
                ),
            ),
            eventbus_address=peer_address(env, "eventbus"),
            relay_interval_s=reader.number(
                "GRACE_MEMORY_RELAY_INTERVAL_S", 1.0, minimum=0.01, maximum=60
            ),
        )
