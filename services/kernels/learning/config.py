"""Configuration of the learning kernel.

Besides the common server settings (see `services.common.config`):

Detection (see `detector`): `GRACE_LEARNING_MIN_COUNT` (30 calls in a bucket and in the
rest before it is tested), `GRACE_LEARNING_Z` (4.0), `GRACE_LEARNING_MIN_EFFECT` (0.1:
failure rate above the rest's), `GRACE_LEARNING_LATENCY_RATIO` (1.5),
`GRACE_LEARNING_MIN_LATENCY_DELTA_MS` (5),
`GRACE_LEARNING_MAX_RETRY_SUCCESS` (0.2), `GRACE_LEARNING_ANALYZE_INTERVAL_S` (30),
`GRACE_LEARNING_MAX_ACTIONS` (10000 (domain, action) pairs tracked).

Peers: `GRACE_MEMORY_ADDR` (patterns are contributed there), `GRACE_EVENTBUS_ADDR`
(`insight.*` events), `GRACE_IMMUTABLE_LOG_ADDR` (a `learning.pattern_found` entry per
pattern), `GRACE_REGISTRY_ADDR`; `GRACE_LEARNING_REGISTER=false` skips
registering as domain `learning` (capabilities `learning`, `patterns`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.common.config import DEFAULT_PORTS, EnvReader, ServerConfig, peer_address
from services.kernels.learning.detector import DetectorSettings
from services.kernels.learning.learning import LearningSettings
from services.kernels.registration import DomainRegistration, registration_from_env

SERVICE = "learning"
CAPABILITIES = ("learning", "patterns")


@dataclass(frozen=True)
class LearningConfig:
    """Everything the learning server reads at start-up."""

    server: ServerConfig
    learning: LearningSettings = field(default_factory=LearningSettings)
    registration: DomainRegistration | None = None
    memory_address: str = f"127.0.0.1:{DEFAULT_PORTS['memory']}"
    eventbus_address: str = f"127.0.0.1:{DEFAULT_PORTS['eventbus']}"
    immutable_log_address: str = f"127.0.0.1:{DEFAULT_PORTS['immutable_log']}"
    relay_interval_s: float = 1.0

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, flags: argparse.Namespace | None = None
    ) -> LearningConfig:
        """Reads the config from `env` (default os.environ) and parsed flags."""
        env = dict(os.environ if env is None else env)
        r = EnvReader(env)
        server = ServerConfig.from_env(SERVICE, DEFAULT_PORTS[SERVICE], env, flags)
        detector = DetectorSettings(
            min_count=r.integer("GRACE_LEARNING_MIN_COUNT", 30, minimum=5, maximum=1_000_000),
            z_threshold=r.number("GRACE_LEARNING_Z", 4.0, minimum=1.0, maximum=50.0),
            min_effect=r.number("GRACE_LEARNING_MIN_EFFECT", 0.1, minimum=0.0, maximum=1.0),
            min_latency_ratio=r.number(
                "GRACE_LEARNING_LATENCY_RATIO", 1.5, minimum=1.0, maximum=1000.0
            ),
            min_latency_delta_ms=r.number(
                "GRACE_LEARNING_MIN_LATENCY_DELTA_MS", 5.0, minimum=0.0, maximum=3_600_000
            ),
            max_retry_success=r.number(
                "GRACE_LEARNING_MAX_RETRY_SUCCESS", 0.2, minimum=0.0, maximum=1.0
            ),
        )
        return cls(
            server=server,
            learning=LearningSettings(
                detector=detector,
                analyze_interval_s=r.number(
                    "GRACE_LEARNING_ANALYZE_INTERVAL_S", 30.0, minimum=0.05, maximum=86_400
                ),
                max_actions=r.integer(
                    "GRACE_LEARNING_MAX_ACTIONS", 10_000, minimum=1, maximum=1_000_000
                ),
            ),
            registration=registration_from_env(env, SERVICE, server.host, CAPABILITIES),
            memory_address=peer_address(env, "memory"),
            eventbus_address=peer_address(env, "eventbus"),
            immutable_log_address=peer_address(env, "immutable_log"),
            relay_interval_s=r.number(
                "GRACE_LEARNING_RELAY_INTERVAL_S", 1.0, minimum=0.01, maximum=60
            ),
        )
