"""Bearer tokens: stored hashed, scoped by roles, expiring and revocable."""

from __future__ import annotations

import datetime
import stat
from pathlib import Path

import pytest

from services.common.tokens import TokenError, TokenStore, TokenValidator, parse_duration
from tests.support import ManualClock


def test_a_token_is_stored_only_as_its_hash_in_an_owner_only_file(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    token, record = store.create("alice", ["operator"])
    text = store.path.read_text()
    assert token not in text
    assert record.digest in text
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    found = TokenValidator(store.path, refresh_s=0).validate(token)
    assert found is not None
    assert (found.principal, found.roles) == ("alice", ("operator",))


def test_an_expired_token_no_longer_authenticates(tmp_path: Path) -> None:
    clock = ManualClock()
    store = TokenStore(tmp_path / "tokens.json", clock=clock)
    token, _ = store.create("bob", ["reader"], datetime.timedelta(hours=1))
    validator = TokenValidator(store.path, refresh_s=0, clock=clock)
    assert validator.validate(token) is not None
    clock.advance(3601)
    assert validator.validate(token) is None


def test_a_revoked_token_stops_working_at_the_next_refresh(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    token, record = store.create("carol", ["admin"])
    validator = TokenValidator(store.path, refresh_s=0)
    assert validator.validate(token) is not None
    store.revoke(record.id)
    assert validator.validate(token) is None
    assert [r.revoked for r in store.list()] == [True]


def test_a_token_created_since_the_last_read_works_at_once(tmp_path: Path) -> None:
    # Guardian issues a domain's join token just before it starts the domain, which joins
    # through a gateway that read the file a moment earlier.
    store = TokenStore(tmp_path / "tokens.json")
    first, _ = store.create("erin", ["reader"])
    validator = TokenValidator(store.path, refresh_s=3600)
    assert validator.validate(first) is not None
    joining, _ = store.create("join:data_domain", ["domain:data_domain"])
    found = validator.validate(joining)
    assert found is not None
    assert found.roles == ("domain:data_domain",)


def test_unknown_tokens_and_roles_are_refused(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    assert TokenValidator(store.path, refresh_s=0).validate("grace_nope") is None
    with pytest.raises(TokenError, match="role 'root'"):
        store.create("dave", ["root"])
    with pytest.raises(TokenError, match="no token with this id"):
        store.revoke("0123456789ab")
    assert store.create("ai", ["domain:ai_domain"])[1].roles == ("domain:ai_domain",)


def test_durations_read_as_people_write_them() -> None:
    assert parse_duration("90s") == datetime.timedelta(seconds=90)
    assert parse_duration("24h") == datetime.timedelta(hours=24)
    assert parse_duration("30d") == datetime.timedelta(days=30)
    with pytest.raises(TokenError, match="ttl"):
        parse_duration("forever")
