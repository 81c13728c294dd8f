"""Configuration of the trust kernel.

Besides the common server settings (see `services.common.config`):

- `GRACE_TRUST_ROOTS`: comma-separated domain ids whose certifications anchor trust when a
  VerifyMessage names no asking domain (default none: then only asking domains anchor).
- `GRACE_TRUST_MAX_DEPTH`: default longest trust path in hops (3); `GRACE_TRUST_DEPTH_LIMIT`
  the largest a request may ask for (8).
- `GRACE_TRUST_CHALLENGE_TTL_S` (300), `GRACE_TRUST_CLOCK_SKEW_S` (300).
- `GRACE_TRUST_WEIGHT_CERTIFICATIONS` (0.4), `GRACE_TRUST_WEIGHT_LEASE` (0.3),
  `GRACE_TRUST_WEIGHT_STEPS` (0.3): trust score weights.
- `GRACE_TRUST_REGISTRY_TIMEOUT_S`: deadline of registry lookups for scores (1).
- `GRACE_TRUST_RESERVED_IDS`: comma-separated ids reserved besides Grace's own components
  (`services.common.components.COMPONENT_IDS`, always reserved): only the component itself,
  with the key provisioned for it in the data dir (`<data dir>/<id>.pub`), or a caller
  authenticated as that id may register them (see `services.kernels.trust.claims`).
- `GRACE_TRUST_REGISTER`: register in the registry as a domain (true);
  `GRACE_TRUST_ADVERTISE_HOST`, `GRACE_TRUST_LEASE_TTL_S`, `GRACE_REGISTRY_ADDR` tune it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass

from services.common.components import COMPONENT_IDS
from services.common.config import DEFAULT_PORTS, ConfigError, EnvReader, ServerConfig, peer_address
from services.common.validation import ID_PATTERN
from services.kernels.registration import DomainRegistration, registration_from_env
from services.kernels.trust.claims import ClaimRules
from services.kernels.trust.scoring import Weights
from services.kernels.trust.trust import TrustSettings

SERVICE = "trust"
CAPABILITIES = ("trust", "identity", "signature_verification")


@dataclass(frozen=True)
class TrustConfig:
    """Everything the trust server reads at start-up."""

    server: ServerConfig
    settings: TrustSettings
    registry_address: str
    registry_timeout_s: float
    registration: DomainRegistration | None

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, flags: argparse.Namespace | None = None
    ) -> TrustConfig:
        """Reads the config from `env` (default os.environ) and parsed flags."""
        env = dict(os.environ if env is None else env)
        reader = EnvReader(env)
        server = ServerConfig.from_env(SERVICE, DEFAULT_PORTS[SERVICE], env, flags)
        roots = tuple(
            r.strip() for r in reader.text("GRACE_TRUST_ROOTS", "").split(",") if r.strip()
        )
        for root in roots:
            if not ID_PATTERN.fullmatch(root):
                raise ConfigError(f"GRACE_TRUST_ROOTS: {root!r} is not a domain id")
        reserved = tuple(
            r.strip() for r in reader.text("GRACE_TRUST_RESERVED_IDS", "").split(",") if r.strip()
        )
        for name in reserved:
            if not ID_PATTERN.fullmatch(name):
                raise ConfigError(f"GRACE_TRUST_RESERVED_IDS: {name!r} is not a domain id")
        limit = reader.integer("GRACE_TRUST_DEPTH_LIMIT", 8, minimum=1, maximum=32)
        weights = Weights(
            certifications=reader.number(
                "GRACE_TRUST_WEIGHT_CERTIFICATIONS", 0.4, minimum=0, maximum=1
            ),
            lease_reliability=reader.number("GRACE_TRUST_WEIGHT_LEASE", 0.3, minimum=0, maximum=1),
            step_success=reader.number("GRACE_TRUST_WEIGHT_STEPS", 0.3, minimum=0, maximum=1),
        )
        if weights.certifications + weights.lease_reliability + weights.step_success <= 0:
            raise ConfigError("GRACE_TRUST_WEIGHT_*: at least one weight must be positive")
        return cls(
            server=server,
            settings=TrustSettings(
                roots=roots,
                max_depth=reader.integer("GRACE_TRUST_MAX_DEPTH", 3, minimum=1, maximum=limit),
                depth_limit=limit,
                challenge_ttl_s=reader.number(
                    "GRACE_TRUST_CHALLENGE_TTL_S", 300, minimum=1, maximum=86400
                ),
                clock_skew_s=reader.number(
                    "GRACE_TRUST_CLOCK_SKEW_S", 300, minimum=1, maximum=86400
                ),
                weights=weights,
                claims=ClaimRules(COMPONENT_IDS | frozenset(reserved), server.data_dir),
            ),
            registry_address=peer_address(env, "registry"),
            registry_timeout_s=reader.number(
                "GRACE_TRUST_REGISTRY_TIMEOUT_S", 1.0, minimum=0.05, maximum=60
            ),
            registration=registration_from_env(env, SERVICE, server.host, CAPABILITIES),
        )
