"""Many rows per INSERT on a raw `sqlite3` connection: the same rows, in the same order, as
`executemany` would store, in few statements of few shapes, within SQLite's parameter
limit, and atomically inside the caller's transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from services.common.storage import RowInsert, sqlite_transaction

COLUMNS = ("k", "label", "n")


@pytest.fixture
def conn() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, k TEXT UNIQUE, label TEXT, n INTEGER)")
    yield conn
    conn.close()


def stored(conn: sqlite3.Connection) -> list[tuple[str, str, int]]:
    return conn.execute("SELECT k, label, n FROM t ORDER BY seq").fetchall()


def traced_inserts(conn: sqlite3.Connection) -> list[str]:
    """The INSERT statements `conn` runs from now on, as SQLite expanded them."""
    statements: list[str] = []
    conn.set_trace_callback(lambda sql: statements.append(sql) if "INSERT" in sql else None)
    return statements


@pytest.mark.parametrize("count", [0, 1, 2, 3, 255, 256, 257, 1000])
def test_every_row_is_stored_in_order_in_few_statements(
    conn: sqlite3.Connection, count: int
) -> None:
    rows = [(f"k{i}", "x" * (i % 7), i) for i in range(count)]
    statements = traced_inserts(conn)
    RowInsert("t", COLUMNS).run(conn, rows)
    assert stored(conn) == rows
    # Full statements of 256 rows, then the rest in powers of two: one per set bit.
    assert len(statements) == count // 256 + bin(count % 256).count("1")


def test_a_handful_of_statement_shapes_serve_every_batch_size(conn: sqlite3.Connection) -> None:
    insert = RowInsert("t", COLUMNS, max_rows=64)
    statements = traced_inserts(conn)
    start = 0
    for size in range(1, 200):
        insert.run(conn, [(f"k{start + i}", "", start + i) for i in range(size)])
        start += size
    assert len(stored(conn)) == start
    shapes = {statement.count("),(") + 1 for statement in statements}
    assert shapes == {1, 2, 4, 8, 16, 32, 64}


def test_statements_stay_within_sqlites_limit_on_bound_parameters(
    conn: sqlite3.Connection,
) -> None:
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 10)  # three columns: 3 rows at most
    rows = [(f"k{i}", "", i) for i in range(11)]
    statements = traced_inserts(conn)
    RowInsert("t", COLUMNS).run(conn, rows)
    assert stored(conn) == rows
    assert max(statement.count("),(") + 1 for statement in statements) == 2


def test_an_upsert_sees_the_earlier_rows_of_its_own_statement(conn: sqlite3.Connection) -> None:
    upsert = RowInsert("t", COLUMNS, on_conflict="ON CONFLICT (k) DO UPDATE SET n = n + excluded.n")
    rows = [("a", "", 1), ("b", "", 10), ("a", "", 2), ("a", "", 4), ("b", "", 20)]
    upsert.run(conn, rows)
    one_by_one = sqlite3.connect(":memory:", isolation_level=None)
    one_by_one.execute(
        "CREATE TABLE t (seq INTEGER PRIMARY KEY, k TEXT UNIQUE, label TEXT, n INTEGER)"
    )
    one_by_one.executemany(upsert.sql, rows)
    assert stored(conn) == stored(one_by_one) == [("a", "", 7), ("b", "", 30)]


def test_a_refused_row_leaves_nothing_of_the_transaction(conn: sqlite3.Connection) -> None:
    conn.execute("INSERT INTO t (k, label, n) VALUES ('taken', '', 0)")
    rows = [(f"k{i}", "", i) for i in range(300)] + [("taken", "", 1)]
    with pytest.raises(sqlite3.IntegrityError), sqlite_transaction(conn):
        RowInsert("t", COLUMNS).run(conn, rows)
    assert stored(conn) == [("taken", "", 0)]


def test_an_insert_needs_columns_and_rows() -> None:
    with pytest.raises(ValueError, match="an insert needs columns"):
        RowInsert("t", ())
    with pytest.raises(ValueError, match="an insert needs columns"):
        RowInsert("t", COLUMNS, max_rows=0)
