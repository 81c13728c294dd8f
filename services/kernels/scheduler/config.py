"""Configuration of the scheduler kernel.

Besides the common server settings (see `services.common.config`):

- `GRACE_SCHEDULER_INSTANCE_ID`: names this instance in the claims it holds (default a
  random id per start).
- `GRACE_SCHEDULER_LEASE_S` (60): how long a claimed firing stays this instance's; another
  instance takes over a firing whose lease lapsed. Must exceed the action timeout.
- `GRACE_SCHEDULER_ACTION_TIMEOUT_S` (30): deadline of each call a firing makes.
- `GRACE_SCHEDULER_POLL_INTERVAL_S` (1): longest sleep between passes (how soon schedules
  created through another instance are seen).
- `GRACE_SCHEDULER_LOOKAHEAD_S` (0.5): firings are claimed this far ahead of their fire
  time and then wait for it, so the claim's commit does not make them late.
- `GRACE_SCHEDULER_BATCH` (500), `GRACE_SCHEDULER_MAX_CONCURRENT` (64),
  `GRACE_SCHEDULER_HISTORY` (100 finished firings kept per schedule).
- `GRACE_SCHEDULER_GOVERNANCE_FALLBACK` (log_only | enforce; default enforce: a firing is
  not run blind when governance is down, at or above high risk),
  `GRACE_SCHEDULER_GOVERNANCE_DEADLINE_S` (2).

Peers: `GRACE_ORCHESTRATOR_ADDR`, `GRACE_REGISTRY_ADDR`, `GRACE_EVENTBUS_ADDR`,
`GRACE_IMMUTABLE_LOG_ADDR`, `GRACE_GOVERNANCE_ADDR`. No tasks service exists yet: task
actions are refused at creation with FAILED_PRECONDITION.
`GRACE_SCHEDULER_REGISTER=false` skips registering as domain `scheduler`.
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
from services.kernels.registration import DomainRegistration, registration_from_env
from services.kernels.scheduler.firer import SchedulerSettings

SERVICE = "scheduler"
CAPABILITIES = ("scheduling",)


@dataclass(frozen=True)
class SchedulerConfig:
    """Everything the scheduler server reads at start-up."""

    server: ServerConfig
    settings: SchedulerSettings
    action_timeout_s: float = 30.0
    governance_fallback: str = "enforce"
    governance_deadline_s: float = 2.0
    registration: DomainRegistration | None = None
    orchestrator_address: str = f"127.0.0.1:{DEFAULT_PORTS['orchestrator']}"
    registry_address: str = f"127.0.0.1:{DEFAULT_PORTS['registry']}"
    eventbus_address: str = f"127.0.0.1:{DEFAULT_PORTS['eventbus']}"
    immutable_log_address: str = f"127.0.0.1:{DEFAULT_PORTS['immutable_log']}"
    governance_address: str = f"127.0.0.1:{DEFAULT_PORTS['governance']}"
    relay_interval_s: float = 1.0

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, flags: argparse.Namespace | None = None
    ) -> SchedulerConfig:
        """Reads the config from `env` (default os.environ) and parsed flags."""
        env = dict(os.environ if env is None else env)
        r = EnvReader(env)
        server = ServerConfig.from_env(SERVICE, DEFAULT_PORTS[SERVICE], env, flags)
        lease = r.number("GRACE_SCHEDULER_LEASE_S", 60.0, minimum=1, maximum=86_400)
        timeout = r.number("GRACE_SCHEDULER_ACTION_TIMEOUT_S", 30.0, minimum=0.1, maximum=3600)
        if timeout >= lease:
            raise ConfigError(
                f"GRACE_SCHEDULER_ACTION_TIMEOUT_S={timeout:g}: must be shorter than "
                f"GRACE_SCHEDULER_LEASE_S={lease:g}, or a live instance could lose its firing"
            )
        return cls(
            server=server,
            settings=SchedulerSettings(
                instance_id=r.text("GRACE_SCHEDULER_INSTANCE_ID", ""),
                lease_s=lease,
                lookahead_s=r.number("GRACE_SCHEDULER_LOOKAHEAD_S", 0.5, minimum=0, maximum=10),
                poll_interval_s=r.number(
                    "GRACE_SCHEDULER_POLL_INTERVAL_S", 1.0, minimum=0.01, maximum=60
                ),
                batch=r.integer("GRACE_SCHEDULER_BATCH", 500, minimum=1, maximum=10_000),
                max_concurrent=r.integer(
                    "GRACE_SCHEDULER_MAX_CONCURRENT", 64, minimum=1, maximum=10_000
                ),
                history=r.integer("GRACE_SCHEDULER_HISTORY", 100, minimum=1, maximum=100_000),
            ),
            action_timeout_s=timeout,
            governance_fallback=r.choice(
                "GRACE_SCHEDULER_GOVERNANCE_FALLBACK", "enforce", ["log_only", "enforce"]
            ),
            governance_deadline_s=r.number(
                "GRACE_SCHEDULER_GOVERNANCE_DEADLINE_S", 2.0, minimum=0.05, maximum=60
            ),
            registration=registration_from_env(env, SERVICE, server.host, CAPABILITIES),
            orchestrator_address=peer_address(env, "orchestrator"),
            registry_address=peer_address(env, "registry"),
            eventbus_address=peer_address(env, "eventbus"),
            immutable_log_address=peer_address(env, "immutable_log"),
            governance_address=peer_address(env, "governance"),
            relay_interval_s=r.number(
                "GRACE_SCHEDULER_RELAY_INTERVAL_S", 1.0, minimum=0.01, maximum=60
            ),
        )
