"""`grace token create | list | revoke` as a user types them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.cli import main
from services.common.tokens import TokenValidator, tokens_file


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_create_prints_the_token_alone_and_it_authenticates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys, "token", "create", "--principal", "alice", "--role", "operator",
        "--ttl", "12h", "--data-dir", str(tmp_path),
    )  # fmt: skip
    assert code == 0
    token = out.strip()
    assert out == token + "\n"
    assert token.startswith("grace_")
    record = TokenValidator(tokens_file(tmp_path), refresh_s=0).validate(token)
    assert record is not None
    assert (record.principal, record.roles) == ("alice", ("operator",))


def test_a_join_token_as_json_then_list_and_revoke(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = ("--data-dir", str(tmp_path))
    code, out, _ = run(capsys, "token", "create", "--domain", "ai_domain", "-o", "json", *data_dir)
    assert code == 0
    created = json.loads(out)
    assert created["principal"] == "domain:ai_domain"
    assert created["roles"] == ["domain:ai_domain"]
    code, out, _ = run(capsys, "token", "list", "-o", "json", *data_dir)
    listed = json.loads(out)
    assert [(t["id"], t["revoked"]) for t in listed] == [(created["id"], False)]
    assert created["token"] not in out
    code, out, _ = run(capsys, "token", "revoke", created["id"], *data_dir)
    assert code == 0
    assert TokenValidator(tokens_file(tmp_path), refresh_s=0).validate(created["token"]) is None


def test_bad_roles_and_missing_principals_exit_2_naming_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = ("--data-dir", str(tmp_path))
    code, _, err = run(capsys, "token", "create", "--principal", "x", "--role", "root", *data_dir)
    assert code == 2
    assert "role 'root'" in err
    code, _, err = run(capsys, "token", "create", "--role", "reader", *data_dir)
    assert code == 2
    assert "--principal" in err
