"""Writer threads wait for another SQLite writer on their own, never inside SQLite."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from services.common.storage import is_sqlite_busy, retry_while_busy


def test_a_busy_attempt_is_retried_until_it_succeeds() -> None:
    failures = [sqlite3.OperationalError("database is locked")] * 2
    calls = []

    def attempt() -> str:
        calls.append(1)
        if failures:
            raise failures.pop()
        return "committed"

    assert retry_while_busy(attempt, pause_s=0) == "committed"
    assert len(calls) == 3


def test_any_other_error_is_raised_at_once() -> None:
    calls = []

    def attempt() -> None:
        calls.append(1)
        raise sqlite3.OperationalError("no such table: firings")

    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        retry_while_busy(attempt, pause_s=0)
    assert len(calls) == 1


def test_busy_past_the_deadline_is_raised() -> None:
    def attempt() -> None:
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(sqlite3.OperationalError, match="locked"):
        retry_while_busy(attempt, timeout_s=0, pause_s=0)


def test_a_real_lock_held_by_another_connection_is_busy(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        with pytest.raises(sqlite3.OperationalError) as raised:
            other.execute("BEGIN IMMEDIATE")
        assert is_sqlite_busy(raised.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        other.close()
