"""The librarian's settings from the environment."""

from __future__ import annotations

import pytest

from services.common.config import ConfigError
from services.kernels.librarian.config import CAPABILITIES, LibrarianConfig
from services.kernels.librarian.intake import DEFAULT_PATTERNS


def test_defaults_subscribe_to_documents_contributions_and_workflow_outputs() -> None:
    config = LibrarianConfig.from_env({})

    assert config.server.port == 8130
    assert config.patterns == DEFAULT_PATTERNS
    assert config.subscribe
    assert config.http
    assert config.registration is not None
    assert list(config.registration.capabilities) == list(CAPABILITIES)
    assert set(CAPABILITIES) == {"search", "indexing", "knowledge"}


def test_patterns_plain_http_and_registration_are_configurable() -> None:
    config = LibrarianConfig.from_env(
        {
            "GRACE_LIBRARIAN_PATTERNS": "data.ingested, notes.*",
            "GRACE_LIBRARIAN_HTTP": "false",
            "GRACE_LIBRARIAN_REGISTER": "false",
            "GRACE_LIBRARIAN_PORT": "9130",
        }
    )

    assert config.patterns == ("data.ingested", "notes.*")
    assert not config.http
    assert config.registration is None
    assert config.server.port == 9130


def test_a_malformed_pattern_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="GRACE_LIBRARIAN_PATTERNS"):
        LibrarianConfig.from_env({"GRACE_LIBRARIAN_PATTERNS": "bad pattern!"})
