"""Configuration of the shared memory server from the environment."""

from __future__ import annotations

import pytest

from services.common.config import ConfigError
from services.memory.config import MemoryConfig


def test_defaults_follow_the_design() -> None:
    config = MemoryConfig.from_env({})
    assert config.server.port == 8103
    assert config.server.database_url.endswith("memory.db")
    assert config.settings.default_confidence == 0.5
    assert config.settings.max_content_bytes == 1024 * 1024
    assert config.eventbus_address == "127.0.0.1:8100"


def test_environment_overrides_are_read() -> None:
    config = MemoryConfig.from_env(
        {
            "GRACE_MEMORY_PORT": "9103",
            "GRACE_MEMORY_DEFAULT_CONFIDENCE": "0.7",
            "GRACE_MEMORY_MAX_CONTENT_BYTES": "4096",
            "GRACE_EVENTBUS_ADDR": "bus:1234",
        }
    )
    assert config.server.port == 9103
    assert config.settings.default_confidence == 0.7
    assert config.settings.max_content_bytes == 4096
    assert config.eventbus_address == "bus:1234"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GRACE_MEMORY_DEFAULT_CONFIDENCE", "1.5"),
        ("GRACE_MEMORY_MAX_CONTENT_BYTES", "lots"),
        ("GRACE_MEMORY_WATCH_BUFFER", "1"),
    ],
)
def test_bad_values_fail_fast_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        MemoryConfig.from_env({name: value})
