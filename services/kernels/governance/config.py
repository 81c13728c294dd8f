"""Configuration of the governance kernel.

Besides the common server settings (see `services.common.config`):

- `GRACE_GOVERNANCE_MODE`: `log_only` or `enforce`, applied (and persisted) at start;
  unset keeps the mode last set with SetMode, `log_only` on a fresh store.
- `GRACE_GOVERNANCE_DEFAULTS`: default effect per risk level when no enforcing policy
  matches, in enforce mode (`low=permit,medium=permit,high=forbid,critical=forbid`).
- `GRACE_GOVERNANCE_DEFAULT_RISK`: risk level of requests that give none (`medium`).
- `GRACE_GOVERNANCE_FAIL_CLOSED_AT`: from this risk level up a policy that fails to
  evaluate forbids (`high`).
- `GRACE_GOVERNANCE_APPROVAL_TTL_S`: how long approval requests wait (3600).
- `GRACE_GOVERNANCE_POLICY_FILE`: JSON or TOML policy file loaded at start.
- `GRACE_REGISTRY_ADDR`, `GRACE_EVENTBUS_ADDR`, `GRACE_IMMUTABLE_LOG_ADDR`: peers;
  `GRACE_GOVERNANCE_REGISTER=false` skips registering in the registry as domain
  `governance` (see `services.kernels.registration`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common.config import (
    DEFAULT_PORTS,
    ConfigError,
    EnvReader,
    ServerConfig,
    peer_address,
)
from services.kernels.governance.governance import GovernanceSettings
from services.kernels.governance.model import Effect, Mode, RiskLevel
from services.kernels.governance.policy import DEFAULT_EFFECTS
from services.kernels.registration import DomainRegistration, registration_from_env

SERVICE = "governance"
CAPABILITIES = ("governance", "verify", "policy", "approval")


def parse_defaults(name: str, text: str | None) -> dict[RiskLevel, Effect]:
    """`low=permit,high=forbid` as a map; levels not named keep the built-in default."""
    out = dict(DEFAULT_EFFECTS)
    if not text:
        return out
    for item in text.split(","):
        level, sep, effect = item.partition("=")
        try:
            if not sep:
                raise ValueError(item)
            out[RiskLevel.parse(level)] = Effect(effect.strip().lower())
        except ValueError:
            raise ConfigError(
                f"{name}={text!r}: expected level=effect pairs, for example "
                "low=permit,high=forbid (effects: permit, forbid, require_approval)"
            ) from None
    return out


def _risk(reader: EnvReader, name: str, default: RiskLevel) -> RiskLevel:
    return RiskLevel.parse(reader.choice(name, default.label, [level.label for level in RiskLevel]))


@dataclass(frozen=True)
class GovernanceConfig:
    """Everything the governance server reads at start-up."""

    server: ServerConfig
    settings: GovernanceSettings
    registration: DomainRegistration | None = None
    eventbus_address: str = f"127.0.0.1:{DEFAULT_PORTS['eventbus']}"
    immutable_log_address: str = f"127.0.0.1:{DEFAULT_PORTS['immutable_log']}"
    relay_interval_s: float = 1.0
    sweep_interval_s: float = 5.0

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, flags: argparse.Namespace | None = None
    ) -> GovernanceConfig:
        """Reads the config from `env` (default os.environ) and parsed flags."""
        env = dict(os.environ if env is None else env)
        reader = EnvReader(env)
        mode = reader.raw("GRACE_GOVERNANCE_MODE")
        if mode is not None and mode not in ("log_only", "enforce"):
            raise ConfigError(f"GRACE_GOVERNANCE_MODE={mode!r}: expected log_only or enforce")
        policy_file = reader.raw("GRACE_GOVERNANCE_POLICY_FILE")
        if policy_file is not None and not Path(policy_file).is_file():
            raise ConfigError(f"GRACE_GOVERNANCE_POLICY_FILE={policy_file!r}: no such file")
        server = ServerConfig.from_env(SERVICE, DEFAULT_PORTS[SERVICE], env, flags)
        return cls(
            server=server,
            settings=GovernanceSettings(
                mode=Mode(mode) if mode else None,
                defaults=parse_defaults(
                    "GRACE_GOVERNANCE_DEFAULTS", reader.raw("GRACE_GOVERNANCE_DEFAULTS")
                ),
                default_risk=_risk(reader, "GRACE_GOVERNANCE_DEFAULT_RISK", RiskLevel.MEDIUM),
                fail_closed_at=_risk(reader, "GRACE_GOVERNANCE_FAIL_CLOSED_AT", RiskLevel.HIGH),
                approval_ttl_s=reader.number(
                    "GRACE_GOVERNANCE_APPROVAL_TTL_S", 3600.0, minimum=1.0, maximum=30 * 86400
                ),
                policy_file=Path(policy_file) if policy_file else None,
            ),
            registration=registration_from_env(env, SERVICE, server.host, CAPABILITIES),
            eventbus_address=peer_address(env, "eventbus"),
            immutable_log_address=peer_address(env, "immutable_log"),
            relay_interval_s=reader.number(
                "GRACE_GOVERNANCE_RELAY_INTERVAL_S", 1.0, minimum=0.01, maximum=60
            ),
            sweep_interval_s=reader.number(
                "GRACE_GOVERNANCE_SWEEP_INTERVAL_S", 5.0, minimum=0.05, maximum=3600
            ),
        )
