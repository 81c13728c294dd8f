"""Configuration of the immune kernel.

Besides the common server settings (see `services.common.config`):

Detection (see `detector`): `GRACE_IMMUNE_WINDOW` (60 points), `GRACE_IMMUNE_MIN_POINTS`
(20), `GRACE_IMMUNE_THRESHOLD` (3.5), `GRACE_IMMUNE_CONSECUTIVE` (3),
`GRACE_IMMUNE_MAD_FLOOR_FRACTION` (0.05), `GRACE_IMMUNE_MAD_FLOOR` (0.001),
`GRACE_IMMUNE_DIRECTION` (up | both | down; default up: the metrics Grace reports itself,
latency and errors, are worse when higher, and a drop must not trigger a restart),
`GRACE_IMMUNE_MIN_RATIO` (3: a spike counts from three times the baseline median; 1 judges
by the robust score alone).

Remediation (see `remediation`): `GRACE_IMMUNE_REMEDIATE` (true; false only detects),
`GRACE_IMMUNE_DRY_RUN` (false), `GRACE_IMMUNE_COOLDOWN_S` (300),
`GRACE_IMMUNE_MAX_ACTIONS` (5) per `GRACE_IMMUNE_RATE_WINDOW_S` (600),
`GRACE_IMMUNE_PLAYBOOKS` (`*=restart_component|rebind_port|diagnose_network`),
`GRACE_IMMUNE_APPROVAL_WAIT_S` (0), `GRACE_IMMUNE_GOVERNANCE_FALLBACK` (what to do when
governance is down: log_only | enforce, default enforce: healing is not done blind),
`GRACE_IMMUNE_GOVERNANCE_DEADLINE_S` (2).

Unified telemetry (see `telemetry`): `GRACE_IMMUNE_TELEMETRY_SLOT_S` (10: the traffic
reported is summed per slot of this width), `GRACE_IMMUNE_TELEMETRY_RETENTION_S` (3600: how
long slots are kept, and the longest window), `GRACE_IMMUNE_TELEMETRY_WINDOW_S` (300: the
window when a request names none).

Metric events: `GRACE_IMMUNE_SUBSCRIBE` (true) creates the push subscription
`immune-metrics` to `metrics.*` and `domain.call.*` on the bus; events arrive on
DomainService.DeliverEvent.

Peers: `GRACE_GUARDIAN_ADDR`, `GRACE_MEMORY_ADDR`, `GRACE_GOVERNANCE_ADDR`,
`GRACE_EVENTBUS_ADDR`, `GRACE_REGISTRY_ADDR`; `GRACE_IMMUNE_REGISTER=false` skips
registering in the registry as domain `immune` (see `services.kernels.registration`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.common.config import (
    DEFAULT_PORTS,
    ConfigError,
    EnvReader,
    ServerConfig,
    peer_address,
)
from services.kernels.immune.detector import DetectorSettings
from services.kernels.immune.playbooks import DEFAULT_PLAYBOOKS, parse_playbooks
from services.kernels.immune.remediation import RemediationSettings
from services.kernels.immune.telemetry import TelemetrySettings
from services.kernels.registration import DomainRegistration, registration_from_env

SERVICE = "immune"
# `diagnostics`, `healing` and `verification` are the capabilities of seed 000's
# full_system_heal workflow (the scan, fix and verify actions).
CAPABILITIES = (
    "immune",
    "anomaly_detection",
    "self_healing",
    "diagnostics",
    "healing",
    "verification",
)


@dataclass(frozen=True)
class ImmuneConfig:
    """Everything the immune server reads at start-up."""

    server: ServerConfig
    detector: DetectorSettings
    remediation: RemediationSettings
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    remediate: bool = True
    subscribe: bool = False
    governance_fallback: str = "enforce"
    governance_deadline_s: float = 2.0
    registration: DomainRegistration | None = None
    eventbus_address: str = f"127.0.0.1:{DEFAULT_PORTS['eventbus']}"
    guardian_address: str = f"127.0.0.1:{DEFAULT_PORTS['guardian']}"
    memory_address: str = f"127.0.0.1:{DEFAULT_PORTS['memory']}"
    governance_address: str = f"127.0.0.1:{DEFAULT_PORTS['governance']}"
    relay_interval_s: float = 1.0

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, flags: argparse.Namespace | None = None
    ) -> ImmuneConfig:
        """Reads the config from `env` (default os.environ) and parsed flags."""
        env = dict(os.environ if env is None else env)
        r = EnvReader(env)
        window = r.integer("GRACE_IMMUNE_WINDOW", 60, minimum=5, maximum=10_000)
        min_points = r.integer("GRACE_IMMUNE_MIN_POINTS", 20, minimum=3, maximum=10_000)
        if min_points > window:
            raise ConfigError(
                f"GRACE_IMMUNE_MIN_POINTS={min_points}: must not exceed GRACE_IMMUNE_WINDOW"
            )
        playbooks_text = r.raw("GRACE_IMMUNE_PLAYBOOKS")
        try:
            playbooks = parse_playbooks(playbooks_text) if playbooks_text else DEFAULT_PLAYBOOKS
        except ValueError as exc:
            raise ConfigError(f"GRACE_IMMUNE_PLAYBOOKS: {exc}") from None
        server = ServerConfig.from_env(SERVICE, DEFAULT_PORTS[SERVICE], env, flags)
        retention = r.number(
            "GRACE_IMMUNE_TELEMETRY_RETENTION_S", 3600.0, minimum=60, maximum=7 * 86400
        )
        default_window = r.number(
            "GRACE_IMMUNE_TELEMETRY_WINDOW_S", 300.0, minimum=1, maximum=retention
        )
        return cls(
            server=server,
            detector=DetectorSettings(
                window=window,
                min_points=min_points,
                threshold=r.number("GRACE_IMMUNE_THRESHOLD", 3.5, minimum=0.5, maximum=100),
                consecutive=r.integer("GRACE_IMMUNE_CONSECUTIVE", 3, minimum=1, maximum=100),
                mad_floor_fraction=r.number(
                    "GRACE_IMMUNE_MAD_FLOOR_FRACTION", 0.05, minimum=0, maximum=10
                ),
                mad_floor=r.number("GRACE_IMMUNE_MAD_FLOOR", 1e-3, minimum=1e-12, maximum=1e9),
                direction=r.choice("GRACE_IMMUNE_DIRECTION", "up", ["up", "both", "down"]),
                min_ratio=r.number("GRACE_IMMUNE_MIN_RATIO", 3.0, minimum=1, maximum=1000),
            ),
            remediation=RemediationSettings(
                dry_run=r.flag("GRACE_IMMUNE_DRY_RUN", False),
                cooldown_s=r.number("GRACE_IMMUNE_COOLDOWN_S", 300.0, minimum=0, maximum=86400),
                max_actions=r.integer("GRACE_IMMUNE_MAX_ACTIONS", 5, minimum=0, maximum=10_000),
                rate_window_s=r.number(
                    "GRACE_IMMUNE_RATE_WINDOW_S", 600.0, minimum=1, maximum=86400
                ),
                playbooks=playbooks,
                approval_wait_s=r.number(
                    "GRACE_IMMUNE_APPROVAL_WAIT_S", 0.0, minimum=0, maximum=3600
                ),
            ),
            telemetry=TelemetrySettings(
                slot_s=r.number("GRACE_IMMUNE_TELEMETRY_SLOT_S", 10.0, minimum=1, maximum=3600),
                retention_s=retention,
                default_window_s=default_window,
            ),
            remediate=r.flag("GRACE_IMMUNE_REMEDIATE", True),
            subscribe=r.flag("GRACE_IMMUNE_SUBSCRIBE", True),
            governance_fallback=r.choice(
                "GRACE_IMMUNE_GOVERNANCE_FALLBACK", "enforce", ["log_only", "enforce"]
            ),
            governance_deadline_s=r.number(
                "GRACE_IMMUNE_GOVERNANCE_DEADLINE_S", 2.0, minimum=0.05, maximum=60
            ),
            registration=registration_from_env(env, SERVICE, server.host, CAPABILITIES),
            eventbus_address=peer_address(env, "eventbus"),
            guardian_address=peer_address(env, "guardian"),
            memory_address=peer_address(env, "memory"),
            governance_address=peer_address(env, "governance"),
            relay_interval_s=r.number(
                "GRACE_IMMUNE_RELAY_INTERVAL_S", 1.0, minimum=0.01, maximum=60
            ),
        )
