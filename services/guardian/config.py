"""Configuration of Guardian.

Besides the common server settings (see `services.common.config`; Guardian's port is
`GRACE_GUARDIAN_PORT`, default 8104):

- `GRACE_CONFIG` / `--config`: the user's topology file merged over the built-in one
  (default `./grace.toml` when it exists).
- `GRACE_GUARDIAN_GROUPS` / `--with GROUP` / `--with-examples`: topology groups to run
  besides "core" (comma-separated in the variable).
- `--otlp ENDPOINT`: export traces over OTLP/gRPC to ENDPOINT (`localhost:4317` or a URL):
  sets `OTEL_EXPORTER_OTLP_ENDPOINT` (and `OTEL_EXPORTER_OTLP_INSECURE=true` for plain
  `http://`) for Guardian and every component it starts.
- `GRACE_GUARDIAN_GOVERNANCE` (on | off, default on): ask governance before each Heal (the
  topology's `governance` component, else `GRACE_GOVERNANCE_ADDR`);
  `GRACE_GUARDIAN_GOVERNANCE_FALLBACK` (log_only | enforce, default log_only): what to do
  when governance cannot answer; `GRACE_GUARDIAN_GOVERNANCE_DEADLINE_S` (2).
- `GRACE_GUARDIAN_VOLUNTEER` (on | off, default on): restart the components the health
  federation confirms down (`domain.down_confirmed`), as governed heals.

Security (see docs/security.md): secure by default. `--insecure` (or `GRACE_INSECURE=true`)
runs Guardian and every component in plaintext with no authentication. Otherwise Guardian
creates the Grace CA under `<data dir>/pki` and issues each component a certificate that
lives `GRACE_CERT_LIFETIME` (default 24h; renewed at two thirds).

Timing (probe interval, timeout, failures; backoff; budgets; start-up and stop timeouts)
lives in the topology file's [probe], [restart], [boot] and [registration] tables.
"""

from __future__ import annotations

import argparse
import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from services.common.allocator import release_interval_s
from services.common.config import (
    DEFAULT_PORTS,
    ConfigError,
    EnvReader,
    ServerConfig,
    server_flag_parser,
)
from services.common.tokens import TokenError, parse_duration

SERVICE = "guardian"
DEFAULT_TOPOLOGY_FILE = "grace.toml"
EXAMPLES_GROUP = "examples"


@dataclass(frozen=True)
class GuardianConfig:
    """Everything Guardian reads at start-up.

    Attributes:
        server: Common server settings (port, data dir, database URL of its own store).
        topology_file: The user's topology file, or None for the built-in one alone.
        groups: Topology groups to run besides "core".
        governance: Ask governance before each Heal.
        governance_fallback: "log_only" or "enforce" when governance cannot answer.
        governance_deadline_s: Longest wait for governance's answer.
        cert_lifetime: Lifetime of the certificates Guardian issues (secure mode).
        volunteer: Restart components the health federation confirms down.
    """

    server: ServerConfig
    topology_file: Path | None = None
    groups: tuple[str, ...] = ()
    governance: bool = True
    governance_fallback: str = "log_only"
    governance_deadline_s: float = 2.0
    cert_lifetime: datetime.timedelta = datetime.timedelta(hours=24)
    volunteer: bool = True

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, flags: argparse.Namespace | None = None
    ) -> GuardianConfig:
        """Reads the config from `env` (default os.environ) and parsed flags."""
        env = dict(os.environ if env is None else env)
        flags = flags or guardian_flag_parser().parse_args([])
        otlp = getattr(flags, "otlp", None)
        if otlp:
            env.update(otlp_environment(otlp))
        if getattr(flags, "insecure", False):
            env["GRACE_INSECURE"] = "true"
        reader = EnvReader(env)
        server = ServerConfig.from_env(SERVICE, DEFAULT_PORTS[SERVICE], env, flags)
        release_interval_s(env)  # read by Guardian's process upkeep: fail here, not at serve
        try:
            cert_lifetime = parse_duration(reader.text("GRACE_CERT_LIFETIME", "24h"))
        except TokenError as exc:
            raise ConfigError(f"GRACE_CERT_LIFETIME: {exc}") from None
        config_text = getattr(flags, "config", None) or reader.raw("GRACE_CONFIG")
        topology_file: Path | None
        if config_text:
            topology_file = Path(config_text)
        elif Path(DEFAULT_TOPOLOGY_FILE).is_file():
            topology_file = Path(DEFAULT_TOPOLOGY_FILE)
        else:
            topology_file = None
        groups = [g.strip() for g in reader.text("GRACE_GUARDIAN_GROUPS", "").split(",")]
        groups += list(getattr(flags, "groups", None) or [])
        if getattr(flags, "with_examples", False):
            groups.append(EXAMPLES_GROUP)
        return cls(
            server=server,
            topology_file=topology_file,
            groups=tuple(dict.fromkeys(g for g in groups if g)),
            governance=reader.choice("GRACE_GUARDIAN_GOVERNANCE", "on", ["on", "off"]) == "on",
            governance_fallback=reader.choice(
                "GRACE_GUARDIAN_GOVERNANCE_FALLBACK", "log_only", ["log_only", "enforce"]
            ),
            governance_deadline_s=reader.number(
                "GRACE_GUARDIAN_GOVERNANCE_DEADLINE_S", 2.0, minimum=0.05, maximum=60
            ),
            cert_lifetime=cert_lifetime,
            volunteer=reader.choice("GRACE_GUARDIAN_VOLUNTEER", "on", ["on", "off"]) == "on",
        )


def otlp_environment(endpoint: str) -> dict[str, str]:
    """The OTEL variables that send every process's traces to an OTLP/gRPC endpoint.

    `host:port` means plain gRPC (`http://host:port`, what Jaeger all-in-one serves on
    4317); an `https://` URL keeps TLS.
    """
    url = endpoint.strip()
    if "://" not in url:
        url = f"http://{url}"
    variables = {"OTEL_EXPORTER_OTLP_ENDPOINT": url}
    if url.startswith("http://"):
        variables["OTEL_EXPORTER_OTLP_INSECURE"] = "true"
    return variables


def add_guardian_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds Guardian's own flags (topology file, groups, trace export) to a parser."""
    parser.add_argument(
        "--config",
        help=f"topology file merged over the built-in one (default ./{DEFAULT_TOPOLOGY_FILE})",
    )
    parser.add_argument(
        "--with",
        dest="groups",
        action="append",
        metavar="GROUP",
        help="also run the components of this topology group (repeatable)",
    )
    parser.add_argument(
        "--with-examples",
        action="store_true",
        help=f"also run the '{EXAMPLES_GROUP}' group (the example domains)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="INSECURE: plaintext gRPC and HTTP, no authentication, no certificates "
        "(anyone who reaches a port controls Grace); for experiments only",
    )
    parser.add_argument(
        "--otlp",
        metavar="ENDPOINT",
        help="export traces of Guardian and every component to this OTLP/gRPC endpoint "
        "(for example localhost:4317, Jaeger's)",
    )
    return parser


def guardian_flag_parser() -> argparse.ArgumentParser:
    """The flags of `python -m services.guardian`."""
    return add_guardian_flags(server_flag_parser(SERVICE))
