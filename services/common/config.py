"""Configuration shared by every Grace server.

Each service has a frozen dataclass built once in `__main__` from the environment and
command-line flags, and passed down explicitly. No module reads `os.environ` on import.
Bad values fail fast with a `ConfigError` that names the variable and the rule.

Variables common to every server (SERVICE is the upper-case component name):

- `GRACE_<SERVICE>_HOST` / `--host`: interface to bind (default 127.0.0.1).
- `GRACE_<SERVICE>_PORT` / `--port`: port to bind (0 picks a free port).
- `GRACE_DATA_DIR` / `--data-dir`: where embedded databases and keys live (default ./.grace).
- `GRACE_<SERVICE>_DATABASE_URL`, else `GRACE_DATABASE_URL` / `--database-url`: SQLAlchemy
  URL; default `sqlite+aiosqlite:///<data dir>/<service>.db`.
- `GRACE_SHUTDOWN_GRACE_S`: how long in-flight calls may finish at shutdown (default 5).
- `GRACE_MAX_MESSAGE_BYTES`: largest gRPC message accepted or sent (default and least 4 MiB).

Security (see docs/security.md); secure unless `GRACE_INSECURE` is true:

- `GRACE_INSECURE`: true serves plaintext with no authentication (`grace up --insecure`).
- `GRACE_PKI_DIR`: the CA bundle, certificates and token file (default <data dir>/pki).
- `GRACE_CA_FILE`: the Grace CA bundle (default <pki dir>/ca.crt).
- `GRACE_TLS_CERT` / `GRACE_TLS_KEY`: this process's certificate and key (default
  <pki dir>/component/<service>.crt and .key, as `grace up` issues them).
- `GRACE_TOKENS_FILE`: the hashed token file (default <pki dir>/tokens.json).
- `GRACE_TOKEN_REFRESH_S`: how often a server re-reads the token file (default 1 s: the
  longest a revocation takes to apply).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

DEFAULT_DATA_DIR = ".grace"

# Default port of every component (seed 003's tiers). Each is overridable with
# GRACE_<SERVICE>_PORT on the server and GRACE_<SERVICE>_ADDR on its clients.
DEFAULT_PORTS: Mapping[str, int] = {
    "gateway": 8000,
    "eventbus": 8100,
    "immutable_log": 8101,
    "registry": 8102,
    "memory": 8103,
    "guardian": 8104,
    "governance": 8110,
    "triggers": 8111,
    "trust": 8112,
    "scheduler": 8120,
    "tasks": 8121,
    "orchestrator": 8122,
    "librarian": 8130,
    "immune": 8131,
    "learning": 8133,
}


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names it."""


class EnvReader:
    """Typed, validated access to an environment mapping.

    Args:
        env: The variables to read (os.environ in production, a dict in tests).
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def raw(self, name: str) -> str | None:
        """The variable's value, or None when it is unset or empty."""
        value = self._env.get(name)
        return value if value not in (None, "") else None

    def text(self, name: str, default: str) -> str:
        """A string variable."""
        return self.raw(name) or default

    def integer(
        self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        """An integer variable within [minimum, maximum]."""
        text = self.raw(name)
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"{name}={text!r}: expected an integer") from None
        return _bounded(name, value, minimum, maximum)

    def number(
        self,
        name: str,
        default: float,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        """A float variable within [minimum, maximum]."""
        text = self.raw(name)
        if text is None:
            return default
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{name}={text!r}: expected a number") from None
        return _bounded(name, value, minimum, maximum)

    def flag(self, name: str, default: bool) -> bool:
        """A boolean variable: 1/true/yes/on or 0/false/no/off."""
        text = self.raw(name)
        if text is None:
            return default
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}={text!r}: expected true or false")

    def choice(self, name: str, default: str, choices: Sequence[str]) -> str:
        """A variable restricted to a set of values."""
        value = self.text(name, default)
        if value not in choices:
            raise ConfigError(f"{name}={value!r}: expected one of {', '.join(choices)}")
        return value


_N = TypeVar("_N", int, float)


def _bounded(name: str, value: _N, minimum: _N | None, maximum: _N | None) -> _N:
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={value}: must be >= {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name}={value}: must be <= {maximum}")
    return value


def env_prefix(service: str) -> str:
    """`GRACE_<SERVICE>_` for a component name such as `immutable_log`."""
    return f"GRACE_{service.upper()}_"


@dataclass(frozen=True)
class SecurityConfig:
    """TLS and authentication settings of a secure process.

    Attributes:
        ca_file: PEM bundle of the Grace CA (trusted roots for peers).
        cert_file: This process's PEM certificate (re-read when renewed).
        key_file: Its PEM private key.
        tokens_file: The hashed token file servers validate bearer tokens against.
        token_refresh_s: Longest time a change to the token file goes unseen.
    """

    ca_file: Path
    cert_file: Path
    key_file: Path
    tokens_file: Path
    token_refresh_s: float = 1.0

    @classmethod
    def from_env(
        cls, service: str, data_dir: Path, env: Mapping[str, str], kind: str = "component"
    ) -> SecurityConfig | None:
        """The settings from `env`, or None when `GRACE_INSECURE` is true."""
        reader = EnvReader(env)
        if reader.flag("GRACE_INSECURE", False):
            return None
        pki = Path(reader.text("GRACE_PKI_DIR", str(data_dir / "pki")))
        return cls(
            ca_file=Path(reader.text("GRACE_CA_FILE", str(pki / "ca.crt"))),
            cert_file=Path(reader.text("GRACE_TLS_CERT", str(pki / kind / f"{service}.crt"))),
            key_file=Path(reader.text("GRACE_TLS_KEY", str(pki / kind / f"{service}.key"))),
            tokens_file=Path(reader.text("GRACE_TOKENS_FILE", str(pki / "tokens.json"))),
            token_refresh_s=reader.number("GRACE_TOKEN_REFRESH_S", 1.0, minimum=0, maximum=300),
        )


@dataclass(frozen=True)
class ServerConfig:
    """What every Grace gRPC server needs to start.

    Attributes:
        service: Component name, for example "registry"; names the env variables, the
            default database file and the telemetry service.name.
        host: Interface to bind.
        port: Port to bind; 0 picks a free one.
        data_dir: Directory for embedded databases and keys.
        database_url: SQLAlchemy async URL of this service's store.
        shutdown_grace_s: Seconds in-flight calls get to finish at shutdown.
        max_message_bytes: Largest message received or sent.
        security: TLS and authentication; None serves plaintext to anyone (insecure mode).
        env: The environment the config was read from, for telemetry set-up.
    """

    service: str
    host: str = "127.0.0.1"
    port: int = 0
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    database_url: str = ""
    shutdown_grace_s: float = 5.0
    max_message_bytes: int = 4 * 1024 * 1024
    security: SecurityConfig | None = None
    env: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def bind_address(self) -> str:
        """`host:port` for grpc's add_insecure_port (IPv6 literals bracketed)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def from_env(
        cls,
        service: str,
        default_port: int,
        env: Mapping[str, str] | None = None,
        flags: argparse.Namespace | None = None,
    ) -> ServerConfig:
        """Reads the common settings from `env`, then lets command-line flags override them.

        Args:
            service: Component name.
            default_port: Port used when neither the env nor a flag sets one.
            env: Variables to read; defaults to os.environ.
            flags: Parsed flags from `server_flag_parser`; None means no flags.
        """
        env = dict(os.environ if env is None else env)
        reader = EnvReader(env)
        prefix = env_prefix(service)
        flags = flags or server_flag_parser(service).parse_args([])
        data_dir = Path(flags.data_dir or reader.text("GRACE_DATA_DIR", DEFAULT_DATA_DIR))
        port = (
            flags.port
            if flags.port is not None
            else reader.integer(f"{prefix}PORT", default_port, minimum=0, maximum=65535)
        )
        if not 0 <= port <= 65535:
            raise ConfigError(f"--port={port}: must be between 0 and 65535")
        database_url = (
            flags.database_url
            or reader.raw(f"{prefix}DATABASE_URL")
            or reader.raw("GRACE_DATABASE_URL")
            or sqlite_url(data_dir / f"{service}.db")
        )
        return cls(
            service=service,
            host=flags.host or reader.text(f"{prefix}HOST", "127.0.0.1"),
            port=port,
            data_dir=data_dir,
            database_url=database_url,
            shutdown_grace_s=reader.number("GRACE_SHUTDOWN_GRACE_S", 5.0, minimum=0, maximum=600),
            # At least 4 MiB: pages and stream batches carry up to pagination.MAX_PAGE_BYTES
            # (3 MiB) of items, which a smaller limit would refuse to send.
            max_message_bytes=reader.integer(
                "GRACE_MAX_MESSAGE_BYTES",
                4 * 1024 * 1024,
                minimum=4 * 1024 * 1024,
                maximum=256 * 1024 * 1024,
            ),
            security=SecurityConfig.from_env(service, data_dir, env),
            env=env,
        )


def sqlite_url(path: Path) -> str:
    """The async SQLAlchemy URL of an SQLite file."""
    return f"sqlite+aiosqlite:///{path}"


def server_flag_parser(service: str) -> argparse.ArgumentParser:
    """The command-line flags every server accepts."""
    parser = argparse.ArgumentParser(
        prog=f"python -m services.{service}", description=f"Grace {service} server"
    )
    parser.add_argument("--host", help=f"interface to bind (env {env_prefix(service)}HOST)")
    parser.add_argument("--port", type=int, help=f"port to bind (env {env_prefix(service)}PORT)")
    parser.add_argument("--data-dir", help="data directory (env GRACE_DATA_DIR)")
    parser.add_argument("--database-url", help="SQLAlchemy URL (env GRACE_DATABASE_URL)")
    return parser


def peer_address(env: Mapping[str, str], peer: str) -> str:
    """The address of a peer service: `GRACE_<PEER>_ADDR`, else localhost and its port."""
    return EnvReader(env).text(f"{env_prefix(peer)}ADDR", f"127.0.0.1:{DEFAULT_PORTS[peer]}")


def reporting_address(env: Mapping[str, str], peer: str) -> str:
    """The address of a peer a service reports to only when told where it is:
    `GRACE_<PEER>_ADDR` (Guardian sets it for every peer under `grace up`), "" when unset
    or `off`. A server started alone then sends nothing to a default port that may belong
    to another Grace."""
    value = EnvReader(env).text(f"{env_prefix(peer)}ADDR", "").strip()
    return "" if value.lower() == "off" else value
