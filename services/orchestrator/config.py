"""Configuration of the orchestrator server.

Besides the common server settings (see `services.common.config`):

- `GRACE_REGISTRY_ADDR`: the registry (default 127.0.0.1:8102).
- `GRACE_EVENTBUS_ADDR`: the event bus the outbox relay publishes to (default 127.0.0.1:8100).
- `GRACE_ORCHESTRATOR_KEY_FILE`: Ed25519 signing key, created on first start with mode
  0600 (default `<data dir>/orchestrator.key`).
- `GRACE_ORCHESTRATOR_MAX_PARALLEL_STEPS`: steps of one execution running at once (16).
- `GRACE_ORCHESTRATOR_MAX_INFLIGHT_CALLS`: domain calls in flight overall (512).
- `GRACE_ORCHESTRATOR_ROUTE_CACHE_S`: how long a resolved domain address is reused (5).
- `GRACE_ORCHESTRATOR_COMPENSATION_RETRY_S` / `..._COMPENSATION_RETRY_MAX_S`: a
  COMPENSATION_FAILED execution's compensation is tried again after this delay, doubling
  (with 20% jitter) up to the maximum, until it succeeds or an operator abandons it
  (10 / 600).
- `GRACE_ORCHESTRATOR_GOVERNANCE`: ask governance (`GRACE_GOVERNANCE_ADDR`) before each
  step, as `<domain>.<action>` by `workflow:<id>` (on | off, default on); a refusal fails
  the step and rolls the execution back. `GRACE_ORCHESTRATOR_GOVERNANCE_FALLBACK`: what
  to do when governance is down (log_only | enforce, default log_only).
- `GRACE_IMMUNE_ADDR`: when set (as `grace up` does), the workflow steps run per workflow
  and domain are reported to the immune kernel's telemetry every
  `GRACE_ORCHESTRATOR_METRICS_INTERVAL_S` (5).
- `GRACE_ORCHESTRATOR_APPROVAL_WAIT_S`: how long a step held by a REQUIRE_APPROVAL policy
  waits for a person's decision before it fails (3600).
- `GRACE_ORCHESTRATOR_LEASE_S`: on PostgreSQL, how long an instance owns an execution
  without renewing its lease; an instance that dies has its executions resumed by another
  within about this time (15). See docs/scale-out.md.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common.backoff import Backoff
from services.common.config import (
    DEFAULT_PORTS,
    EnvReader,
    ServerConfig,
    peer_address,
    reporting_address,
)
from services.orchestrator.engine import OrchestratorSettings

SERVICE = "orchestrator"


@dataclass(frozen=True)
class OrchestratorConfig:
    """Everything the orchestrator server reads at start-up."""

    server: ServerConfig
    settings: OrchestratorSettings
    registry_address: str
    key_file: Path
    route_cache_s: float = 5.0
    lease_s: float = 15.0
    governance: bool = False
    governance_address: str = ""
    governance_fallback: str = "log_only"
    immune_address: str = ""
    metrics_interval_s: float = 5.0

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, flags: argparse.Namespace | None = None
    ) -> OrchestratorConfig:
        """Reads the config from `env` (default os.environ) and parsed flags."""
        env = dict(os.environ if env is None else env)
        reader = EnvReader(env)
        server = ServerConfig.from_env(SERVICE, DEFAULT_PORTS[SERVICE], env, flags)
        return cls(
            server=server,
            settings=OrchestratorSettings(
                max_parallel_steps=reader.integer(
                    "GRACE_ORCHESTRATOR_MAX_PARALLEL_STEPS", 16, minimum=1, maximum=1000
                ),
                max_inflight_calls=reader.integer(
                    "GRACE_ORCHESTRATOR_MAX_INFLIGHT_CALLS", 512, minimum=1, maximum=100_000
                ),
                approval_wait_s=reader.number(
                    "GRACE_ORCHESTRATOR_APPROVAL_WAIT_S", 3600.0, minimum=1, maximum=7 * 86400
                ),
                compensation_retry=Backoff(
                    initial_s=reader.number(
                        "GRACE_ORCHESTRATOR_COMPENSATION_RETRY_S", 10.0, minimum=0.01, maximum=86400
                    ),
                    factor=2.0,
                    max_s=reader.number(
                        "GRACE_ORCHESTRATOR_COMPENSATION_RETRY_MAX_S",
                        600.0,
                        minimum=0.01,
                        maximum=86400,
                    ),
                    jitter=0.2,
                ),
            ),
            registry_address=peer_address(env, "registry"),
            key_file=Path(
                reader.text(
                    "GRACE_ORCHESTRATOR_KEY_FILE", str(server.data_dir / "orchestrator.key")
                )
            ),
            route_cache_s=reader.number(
                "GRACE_ORCHESTRATOR_ROUTE_CACHE_S", 5.0, minimum=0, maximum=3600
            ),
            lease_s=reader.number("GRACE_ORCHESTRATOR_LEASE_S", 15.0, minimum=0.5, maximum=3600),
            # Seed 004 phase 4: ask governance before each step (see services.kernels).
            governance=reader.choice("GRACE_ORCHESTRATOR_GOVERNANCE", "on", ["on", "off"]) == "on",
            governance_address=peer_address(env, "governance"),
            governance_fallback=reader.choice(
                "GRACE_ORCHESTRATOR_GOVERNANCE_FALLBACK", "log_only", ["log_only", "enforce"]
            ),
            # Workflow steps per domain go to the immune kernel's telemetry once per interval.
            immune_address=reporting_address(env, "immune"),
            metrics_interval_s=reader.number(
                "GRACE_ORCHESTRATOR_METRICS_INTERVAL_S", 5.0, minimum=0.1, maximum=3600
            ),
        )
