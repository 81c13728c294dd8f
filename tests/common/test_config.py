"""Configuration from env and flags: defaults, overrides, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.config import (
    ConfigError,
    EnvReader,
    ServerConfig,
    peer_address,
    server_flag_parser,
)


def test_defaults_put_the_database_in_the_data_dir() -> None:
    config = ServerConfig.from_env("registry", 8102, env={})
    assert (config.host, config.port) == ("127.0.0.1", 8102)
    assert config.database_url == "sqlite+aiosqlite:///.grace/registry.db"


def test_env_then_flags_override_defaults() -> None:
    env = {
        "GRACE_REGISTRY_PORT": "9000",
        "GRACE_DATA_DIR": "/var/lib/grace",
        "GRACE_DATABASE_URL": "postgresql://db/grace",
    }
    config = ServerConfig.from_env("registry", 8102, env=env)
    assert config.port == 9000
    assert config.data_dir == Path("/var/lib/grace")
    assert config.database_url == "postgresql://db/grace"

    env["GRACE_REGISTRY_DATABASE_URL"] = "postgresql://db/registry"
    flags = server_flag_parser("registry").parse_args(["--port", "9100", "--host", "::1"])
    config = ServerConfig.from_env("registry", 8102, env=env, flags=flags)
    assert config.port == 9100
    assert config.bind_address == "[::1]:9100"
    assert config.database_url == "postgresql://db/registry"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GRACE_REGISTRY_PORT": "x"}, "GRACE_REGISTRY_PORT='x': expected an integer"),
        ({"GRACE_REGISTRY_PORT": "70000"}, "GRACE_REGISTRY_PORT=70000: must be <= 65535"),
        ({"GRACE_SHUTDOWN_GRACE_S": "-1"}, "GRACE_SHUTDOWN_GRACE_S=-1.0: must be >= 0"),
        # Smaller than a page of items (pagination.MAX_PAGE_BYTES) plus its envelope.
        ({"GRACE_MAX_MESSAGE_BYTES": "1048576"}, "GRACE_MAX_MESSAGE_BYTES=1048576: must be >="),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        ServerConfig.from_env("registry", 8102, env=env)


def test_booleans_and_choices_are_strict() -> None:
    reader = EnvReader({"A": "yes", "B": "maybe", "C": "fast"})
    assert reader.flag("A", False) is True
    with pytest.raises(ConfigError, match="B='maybe'"):
        reader.flag("B", False)
    with pytest.raises(ConfigError, match="expected one of slow, safe"):
        reader.choice("C", "slow", ["slow", "safe"])


def test_peer_addresses_default_to_the_known_ports() -> None:
    assert peer_address({}, "eventbus") == "127.0.0.1:8100"
    assert peer_address({"GRACE_EVENTBUS_ADDR": "bus:1"}, "eventbus") == "bus:1"
