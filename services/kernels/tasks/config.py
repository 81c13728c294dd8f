"""Configuration of the tasks kernel.

Besides the common server settings (see `services.common.config`):

Triggers: `GRACE_TASKS_TRIGGERS` (comma-separated event-type patterns, default
`api.endpoint.failed,error.critical,anomaly.detected,*.failed`), `GRACE_TASKS_SUBSCRIBE`
(true: push subscriptions to those patterns on the bus), `GRACE_TASKS_MIN_INTERVAL_S` (30:
least time between two event-started cycles).

Analysis: `GRACE_TASKS_LOW_SUCCESS_RATE` (0.9), `GRACE_TASKS_CRITICAL_SUCCESS_RATE` (0.5),
`GRACE_TASKS_CRITICAL_COUNT` (5), `GRACE_TASKS_WINDOW_S` (3600: how far back anomalies,
failed executions and dead letters count), `GRACE_TASKS_MEMORY_DOMAINS` (`immune,tasks`:
whose shared-memory contributions are checked for failing patterns),
`GRACE_TASKS_SOURCE_TIMEOUT_S` (5).

Proposals: `GRACE_TASKS_REMEDIES` (`kind_pattern=remedy|remedy;...`, remedies
`heal:<playbook>`, `workflow:<id>`, `action:<domain>.<action>`; see `analysis`),
`GRACE_TASKS_MIN_SEVERITY` (error), `GRACE_TASKS_MAX_TASKS` (5 per cycle).

Tasks: `GRACE_TASKS_APPROVAL_RISK` (medium: at start the kernel makes sure governance has
the policy `tasks-approval`, which holds its tasks of this risk and above for a person's
approval, enforced whatever the global mode; low-risk tasks run at once; `off` creates no
policy, leaving it all to the operator's policies; an existing `tasks-approval` policy is
never changed), `GRACE_TASKS_AUTO_DISPATCH` (true: a task governance allows, by policy or by a
person, runs at once), `GRACE_TASKS_RISK` (medium: risk declared for workflow and action
remedies; heals declare the shared `HEAL_RISK`), `GRACE_TASKS_GOVERNANCE_FALLBACK`
(enforce: when governance is down, high-risk tasks are refused),
`GRACE_TASKS_GOVERNANCE_DEADLINE_S` (2).

Peers: `GRACE_REGISTRY_ADDR`, `GRACE_IMMUNE_ADDR`, `GRACE_EVENTBUS_ADDR`,
`GRACE_ORCHESTRATOR_ADDR`, `GRACE_MEMORY_ADDR`, `GRACE_GUARDIAN_ADDR`,
`GRACE_GOVERNANCE_ADDR`, `GRACE_IMMUTABLE_LOG_ADDR`; `GRACE_TASKS_REGISTER=false` skips
registering as domain `tasks`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.common.config import DEFAULT_PORTS, ConfigError, EnvReader, ServerConfig, peer_address
from services.common.errors import InvalidArgument
from services.common.governance_client import RISK_LEVELS
from services.common.patterns import validate_pattern
from services.kernels.registration import DomainRegistration, registration_from_env
from services.kernels.tasks.analysis import DEFAULT_TRIGGERS, AnalysisSettings, parse_remedies
from services.kernels.tasks.halo import HaloSettings
from services.kernels.tasks.model import Severity
from services.kernels.tasks.squad import SquadSettings

SERVICE = "tasks"
CAPABILITIES = ("tasks", "analysis")
PEERS = (
    "registry",
    "immune",
    "eventbus",
    "orchestrator",
    "memory",
    "guardian",
    "governance",
    "immutable_log",
)


@dataclass(frozen=True)
class TasksConfig:
    """Everything the tasks server reads at start-up."""

    server: ServerConfig
    halo: HaloSettings = field(default_factory=HaloSettings)
    squad: SquadSettings = field(default_factory=SquadSettings)
    subscribe: bool = True
    approval_risk: str = "medium"
    memory_domains: tuple[str, ...] = ("immune", "tasks")
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
    ) -> TasksConfig:
        """Reads the config from `env` (default os.environ) and parsed flags."""
        env = dict(os.environ if env is None else env)
        r = EnvReader(env)
        triggers = (
            tuple(filter(None, (p.strip() for p in r.text("GRACE_TASKS_TRIGGERS", "").split(","))))
            or DEFAULT_TRIGGERS
        )
        try:
            for pattern in triggers:
                validate_pattern(pattern, field="GRACE_TASKS_TRIGGERS")
        except InvalidArgument as exc:
            raise ConfigError(f"GRACE_TASKS_TRIGGERS: {exc.rule}") from None
        remedies_text = r.raw("GRACE_TASKS_REMEDIES")
        try:
            remedies = parse_remedies(remedies_text) if remedies_text else HaloSettings().remedies
        except ValueError as exc:
            raise ConfigError(f"GRACE_TASKS_REMEDIES: {exc}") from None
        window_s = r.number("GRACE_TASKS_WINDOW_S", 3600.0, minimum=1, maximum=30 * 86400)
        server = ServerConfig.from_env(SERVICE, DEFAULT_PORTS[SERVICE], env, flags)
        memory_domains = tuple(
            filter(
                None,
                (
                    d.strip()
                    for d in r.text("GRACE_TASKS_MEMORY_DOMAINS", "immune,tasks").split(",")
                ),
            )
        )
        return cls(
            server=server,
            halo=HaloSettings(
                analysis=AnalysisSettings(
                    low_success_rate=r.number(
                        "GRACE_TASKS_LOW_SUCCESS_RATE", 0.9, minimum=0, maximum=1
                    ),
                    critical_success_rate=r.number(
                        "GRACE_TASKS_CRITICAL_SUCCESS_RATE", 0.5, minimum=0, maximum=1
                    ),
                    critical_count=r.integer(
                        "GRACE_TASKS_CRITICAL_COUNT", 5, minimum=1, maximum=1_000_000
                    ),
                    window_s=window_s,
                ),
                remedies=remedies,
                min_severity=Severity.parse(
                    r.choice("GRACE_TASKS_MIN_SEVERITY", "error", ["warning", "error", "critical"])
                ),
                max_tasks=r.integer("GRACE_TASKS_MAX_TASKS", 5, minimum=0, maximum=1000),
                triggers=triggers,
                min_interval_s=r.number(
                    "GRACE_TASKS_MIN_INTERVAL_S", 30.0, minimum=0, maximum=86400
                ),
                source_timeout_s=r.number(
                    "GRACE_TASKS_SOURCE_TIMEOUT_S", 5.0, minimum=0.05, maximum=120
                ),
            ),
            squad=SquadSettings(
                auto_dispatch=r.flag("GRACE_TASKS_AUTO_DISPATCH", True),
                risk=r.choice("GRACE_TASKS_RISK", "medium", list(RISK_LEVELS)),
            ),
            subscribe=r.flag("GRACE_TASKS_SUBSCRIBE", True),
            approval_risk=r.choice("GRACE_TASKS_APPROVAL_RISK", "medium", [*RISK_LEVELS, "off"]),
            memory_domains=memory_domains,
            governance_fallback=r.choice(
                "GRACE_TASKS_GOVERNANCE_FALLBACK", "enforce", ["log_only", "enforce"]
            ),
            governance_deadline_s=r.number(
                "GRACE_TASKS_GOVERNANCE_DEADLINE_S", 2.0, minimum=0.05, maximum=60
            ),
            registration=registration_from_env(env, SERVICE, server.host, CAPABILITIES),
            addresses={p: peer_address(env, p) for p in PEERS},
            relay_interval_s=r.number(
                "GRACE_TASKS_RELAY_INTERVAL_S", 1.0, minimum=0.01, maximum=60
            ),
        )
