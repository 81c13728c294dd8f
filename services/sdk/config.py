"""Configuration of a domain built with the SDK.

A domain reads the common server settings (see `services.common.config`) under its own id,
so `ai_domain` binds `GRACE_AI_DOMAIN_PORT` (or `--port`) and keeps its database in
`<GRACE_DATA_DIR>/ai_domain.db`, plus:

- `GRACE_REGISTRY_ADDR`, `GRACE_EVENTBUS_ADDR`, `GRACE_MEMORY_ADDR`, `GRACE_TRUST_ADDR` /
  `--registry`, `--eventbus`, `--memory`, `--trust`: where the peers are (default:
  localhost on their ports). The value `off` disables that peer (no registration, no
  events, no memory, no key registration and so no signed events).
- `GRACE_IMMUNE_ADDR` / `--immune`: the immune kernel, sent the domain's call latency and
  errors every heartbeat interval (`off`: not reported).
- `GRACE_LEARNING_ADDR` / `--learning`: the learning kernel, sent the outcome of every
  action in batches (`off`: outcomes are not recorded).
- `GRACE_<DOMAIN>_OUTCOME_RING`: outcomes kept at most in the domain's ring while they wait
  to be sent (100000); `GRACE_<DOMAIN>_OUTCOME_INTERVAL_S`: time between two sends (5).
- `GRACE_<DOMAIN>_KEY_FILE`: the domain's Ed25519 signing key, created 0600 on first start
  (default `<data dir>/<domain>.key`).
- `GRACE_<DOMAIN>_ADVERTISE_HOST` / `--advertise-host`: host sent to the registry (default:
  the bind host when it is a specific address, else empty so the registry uses the
  caller's address).
- `GRACE_INSTANCE_ID`: which instance of the domain this process is, when several serve
  one domain id; each holds its own lease in the registry. Default: `<advertised host or
  host name>:<port>`, stable across the process's restarts.
- `GRACE_<DOMAIN>_LEASE_TTL_S`: lease asked of the registry (30).
- `GRACE_<DOMAIN>_HEARTBEAT_S`: heartbeat interval (lease / 3).
- `GRACE_<DOMAIN>_MAX_CONCURRENCY`: actions run at once; more wait (64). Load = calls in
  flight / this.
- `GRACE_<DOMAIN>_IDEMPOTENCY_TTL_S`: how long results are kept for replay (7 days).
- `GRACE_FEDERATION*`: the domain's part in the health federation (on by default; see
  `services.common.peer_health`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.common.config import (
    EnvReader,
    ServerConfig,
    env_prefix,
    peer_address,
    server_flag_parser,
)
from services.common.peer_health import PeerHealthSettings

DISABLED = "off"


@dataclass(frozen=True)
class DomainConfig:
    """Everything a domain reads at start-up.

    Attributes:
        server: The common server settings; `server.service` is the domain id.
        registry_addr: Registry `host:port`, or "" when registration is off.
        eventbus_addr: Event bus `host:port`, or "" when events are off.
        memory_addr: Shared memory `host:port`, or "" when memory is off.
        trust_addr: Trust kernel `host:port`, or "" when key registration is off.
        immune_addr: Immune kernel `host:port`, or "" when call metrics are not reported.
        learning_addr: Learning kernel `host:port`, or "" when outcomes are not recorded.
        outcome_ring: Outcomes the ring keeps at most.
        outcome_interval_s: Time between two sends of outcomes.
        key_file: The domain's signing key; None means `<data dir>/<domain>.key`.
        advertise_host: Host sent to the registry; "" lets the registry use the caller's.
        instance_id: The instance id sent to the registry; "" means `<host>:<port>` (see
            `DomainServer.instance_id`).
        lease_ttl_s: Lease asked of the registry.
        heartbeat_interval_s: Time between heartbeats.
        max_concurrency: Actions run at once.
        idempotency_ttl_s: How long stored results stay replayable.
        backoff_initial_s: First wait after a peer failed; doubles up to `backoff_max_s`.
        backoff_max_s: Longest wait between attempts to reach a peer.
        peer_health: The domain's part in the health federation.
    """

    server: ServerConfig
    registry_addr: str = ""
    eventbus_addr: str = ""
    memory_addr: str = ""
    trust_addr: str = ""
    immune_addr: str = ""
    learning_addr: str = ""
    outcome_ring: int = 100_000
    outcome_interval_s: float = 5.0
    key_file: Path | None = None
    advertise_host: str = ""
    instance_id: str = ""
    lease_ttl_s: float = 30.0
    heartbeat_interval_s: float = 10.0
    max_concurrency: int = 64
    idempotency_ttl_s: float = 7 * 86400.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    peer_health: PeerHealthSettings = field(default_factory=PeerHealthSettings)

    @property
    def domain_id(self) -> str:
        """The domain's id (its service name)."""
        return self.server.service

    @property
    def key_path(self) -> Path:
        """Where the domain's signing key is."""
        return self.key_file or self.server.data_dir / f"{self.domain_id}.key"

    @classmethod
    def from_env(
        cls,
        domain_id: str,
        default_port: int,
        env: Mapping[str, str] | None = None,
        flags: argparse.Namespace | None = None,
    ) -> DomainConfig:
        """Reads the config from `env` (default os.environ) and flags from `flag_parser`.

        Args:
            domain_id: The domain's id; names its variables and database file.
            default_port: Port used when neither env nor flags set one.
            env: Variables to read.
            flags: Parsed flags; None means no flags.
        """
        env = dict(os.environ if env is None else env)
        flags = flags or flag_parser(domain_id).parse_args([])
        reader = EnvReader(env)
        prefix = env_prefix(domain_id)
        server = ServerConfig.from_env(domain_id, default_port, env, flags)
        lease = reader.number(f"{prefix}LEASE_TTL_S", 30.0, minimum=1, maximum=3600)
        default_advertise = "" if server.host in ("0.0.0.0", "::", "") else server.host
        return cls(
            server=server,
            registry_addr=_peer(env, "registry", flags.registry),
            eventbus_addr=_peer(env, "eventbus", flags.eventbus),
            memory_addr=_peer(env, "memory", flags.memory),
            trust_addr=_peer(env, "trust", flags.trust),
            immune_addr=_peer(env, "immune", flags.immune),
            learning_addr=_peer(env, "learning", flags.learning),
            outcome_ring=reader.integer(
                f"{prefix}OUTCOME_RING", 100_000, minimum=100, maximum=100_000_000
            ),
            outcome_interval_s=reader.number(
                f"{prefix}OUTCOME_INTERVAL_S", 5.0, minimum=0.01, maximum=3600
            ),
            key_file=Path(
                reader.text(f"{prefix}KEY_FILE", str(server.data_dir / f"{domain_id}.key"))
            ),
            advertise_host=flags.advertise_host
            or reader.text(f"{prefix}ADVERTISE_HOST", default_advertise),
            instance_id=reader.text("GRACE_INSTANCE_ID", ""),
            lease_ttl_s=lease,
            heartbeat_interval_s=reader.number(
                f"{prefix}HEARTBEAT_S", lease / 3, minimum=0.05, maximum=lease
            ),
            max_concurrency=reader.integer(
                f"{prefix}MAX_CONCURRENCY", 64, minimum=1, maximum=100_000
            ),
            idempotency_ttl_s=reader.number(
                f"{prefix}IDEMPOTENCY_TTL_S", 7 * 86400.0, minimum=60, maximum=365 * 86400
            ),
            peer_health=PeerHealthSettings.from_env(env),
        )


def _peer(env: Mapping[str, str], peer: str, flag: str | None) -> str:
    value = flag if flag is not None else peer_address(env, peer)
    return "" if value.strip().lower() in (DISABLED, "") else value.strip()


def flag_parser(domain_id: str) -> argparse.ArgumentParser:
    """The command-line flags of a domain: the server's plus the peers'."""
    parser = server_flag_parser(domain_id)
    parser.prog = f"python -m <package of {domain_id}>"
    parser.description = f"Grace domain {domain_id}"
    parser.add_argument("--registry", help="registry host:port or 'off' (GRACE_REGISTRY_ADDR)")
    parser.add_argument("--eventbus", help="event bus host:port or 'off' (GRACE_EVENTBUS_ADDR)")
    parser.add_argument("--memory", help="shared memory host:port or 'off' (GRACE_MEMORY_ADDR)")
    parser.add_argument("--trust", help="trust kernel host:port or 'off' (GRACE_TRUST_ADDR)")
    parser.add_argument("--immune", help="immune kernel host:port or 'off' (GRACE_IMMUNE_ADDR)")
    parser.add_argument(
        "--learning", help="learning kernel host:port or 'off' (GRACE_LEARNING_ADDR)"
    )
    parser.add_argument("--advertise-host", help="host the registry gives to callers")
    return parser


def parse_flags(domain_id: str, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses `argv` (default sys.argv[1:]) with `flag_parser`."""
    return flag_parser(domain_id).parse_args(None if argv is None else list(argv))
