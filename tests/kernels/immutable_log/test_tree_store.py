"""The log's tree kept in its store: roots and proofs of any size equal the reference
recomputation from the leaves, across restarts and after back-filling a log written before
nodes were stored; the memory the log holds stays O(log n); a kill -9 in the middle of
group commits never leaves the stored nodes and leaves disagreeing."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, select

from grace.kernels.immutable_log.v1 import immutable_log_pb2 as pb
from services.common.config import sqlite_url
from services.common.signing import SigningKey, load_or_create_key
from services.common.storage import Database
from services.kernels.immutable_log import log as log_module
from services.kernels.immutable_log import store
from services.kernels.immutable_log.log import ImmutableLog, LogSettings
from services.kernels.immutable_log.merkle import MerkleFrontier, leaf_hash, verify_inclusion
from services.kernels.immutable_log.store import LogStore
from tests.conftest import DatabaseTarget
from tests.kernels.immutable_log.conftest import OpenLog
from tests.kernels.immutable_log.test_merkle import (
    reference_path,
    reference_root,
    reference_subproof,
)

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def entry(n: int) -> pb.EntryData:
    data = pb.EntryData(kind="test.entry", actor="tester")
    data.data.update({"n": n})
    return data


async def leaf_data(log: ImmutableLog) -> list[bytes]:
    return [row.leaf_data async for row in log.store.scan()]


async def append_batches(log: ImmutableLog, batches: Sequence[int], first: int = 0) -> int:
    n = first
    for count in batches:
        await log.append([entry(k) for k in range(n, n + count)])
        n += count
    return n


async def assert_matches_reference(log: ImmutableLog, queries: Sequence[tuple[int, int]]) -> None:
    """Roots, inclusion and consistency proofs at the given (size, index) pairs equal the
    RFC's recomputation from the stored leaf bytes."""
    leaves = await leaf_data(log)
    assert len(leaves) == log.size
    assert (await log.checkpoint())[2] == reference_root(leaves)
    for size, index in queries:
        _note, _size, root = await log.checkpoint(size)
        assert root == reference_root(leaves[:size])
        at, _, path, view, _note = await log.inclusion_proof(index, None, size)
        assert (at, path) == (index, reference_path(index, leaves[:size]))
        assert verify_inclusion(view.leaf_hash, index, size, path, root)
        first = index + 1
        _, _, proof = await log.consistency_proof(first, size)
        if first < size:
            assert proof == reference_subproof(first, leaves[:size], True)


async def drop_tree_tables(db: Database) -> None:
    """What a log written by the version before stored nodes looks like: no nodes table."""
    async with db.transaction() as conn:
        await conn.run_sync(lambda sync: store.nodes.drop(sync))


async def node_count(db: Database) -> int:
    async with db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(store.nodes))).scalar_one())


def expected_node_count(size: int) -> int:
    """Complete aligned subtrees of level >= 1 within `size` leaves."""
    return sum(size >> level for level in range(1, size.bit_length()))


def opener(target: DatabaseTarget, key: SigningKey) -> ImmutableLog:
    return ImmutableLog(
        LogStore(Database(target.url, schema=target.schema)),
        key,
        LogSettings(origin="test.example/log"),
        clock=lambda: 1_800_000_000.0,
    )


async def reset(target: DatabaseTarget) -> None:
    db = Database(target.url, schema=target.schema)
    async with db.transaction() as conn:
        await conn.run_sync(store.metadata.drop_all)
    await db.close()


batches_strategy = st.lists(st.integers(1, 40), min_size=1, max_size=6)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    before=batches_strategy,
    after=batches_strategy,
    old_format=st.booleans(),
    data=st.data(),
)
def test_roots_and_proofs_equal_the_reference_across_a_restart_and_a_back_fill(
    database: DatabaseTarget,
    before: list[int],
    after: list[int],
    old_format: bool,
    data: st.DataObject,
) -> None:
    key = SigningKey.generate()

    def queries(size: int) -> list[tuple[int, int]]:
        sizes = data.draw(st.lists(st.integers(1, size), min_size=1, max_size=4))
        return [(s, data.draw(st.integers(0, s - 1))) for s in sizes]

    async def scenario() -> None:
        await reset(database)
        log = opener(database, key)
        await log.open()
        n = await append_batches(log, before)
        await assert_matches_reference(log, queries(n))
        await log.close()
        if old_format:
            db = Database(database.url, schema=database.schema)
            await drop_tree_tables(db)
            await db.close()
        log = opener(database, key)
        await log.open()
        try:
            assert not log.startup_problem
            assert log.size == n
            assert await node_count(log.store.db) == expected_node_count(n)
            await assert_matches_reference(log, queries(n))
            n = await append_batches(log, after, n)
            await assert_matches_reference(log, queries(n))
            assert await node_count(log.store.db) == expected_node_count(n)
            report = await log.verify_integrity()
            assert report.valid, report.reason
            assert report.checked == n
        finally:
            await log.close()

    asyncio.run(scenario())


async def test_a_back_fill_runs_in_bounded_batches_and_resumes_where_it_stopped(
    open_log: OpenLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_log() as log:
        n = await append_batches(log, [100, 37, 1, 62])
        root = (await log.checkpoint())[2]
        await drop_tree_tables(log.store.db)
    writes: list[int] = []
    real_add = LogStore.add_nodes

    async def counting_add(self: LogStore, completed: Sequence[tuple[int, int, bytes]]) -> None:
        writes.append(len(completed))
        await real_add(self, completed)

    monkeypatch.setattr(log_module, "SCAN_CHUNK", 16)
    monkeypatch.setattr(LogStore, "add_nodes", counting_add)
    async with open_log() as log:
        assert not log.startup_problem
        assert (await log.checkpoint())[2] == root
        assert len(writes) >= n // 16
        # 16 leaves complete 15 nodes below level 5, plus at most one per level above.
        assert max(writes) <= 15 + n.bit_length()
        assert await node_count(log.store.db) == expected_node_count(n)
        # A back-fill killed half way left the nodes of a prefix: the next start finishes it.
        async with log.store.db.transaction() as conn:
            for level in range(1, n.bit_length()):
                # Node (L, i) is completed by leaf (i + 1) * 2^L - 1: keep those of [0, 40).
                await conn.execute(
                    delete(store.nodes).where(
                        store.nodes.c.level == level, store.nodes.c.idx >= 40 >> level
                    )
                )
    writes.clear()
    async with open_log() as log:
        assert not log.startup_problem
        assert writes  # it did back-fill again, from the prefix on
        assert await node_count(log.store.db) == expected_node_count(n)
        await assert_matches_reference(log, [(n, 0), (150, 149), (77, 12)])
        assert (await log.verify_integrity()).valid


async def test_the_log_holds_o_log_n_hashes_however_many_entries_it_has(
    open_log: OpenLog,
) -> None:
    async with open_log() as log:
        n = 0
        for count in (1, 7, 500, 1000, 1, 2047, 3, 1000):
            n = await append_batches(log, [count], n)
            held = hashes_held(log)
            # The frontier (popcount(n) <= bit_length(n)) and the signing key's public
            # half; a log keeping every leaf would hold about 2n.
            assert log.frontier.hash_count == n.bit_count()
            assert held <= n.bit_length() + 4, (n, held)
        await log.inclusion_proof(1234, None, 3000)
        assert hashes_held(log) <= n.bit_length() + 4


def hashes_held(log: ImmutableLog) -> int:
    """32-byte units in every bytes or bytearray the log object reaches, not counting its
    store and database (their buffers are the driver's, not the tree's)."""
    seen: set[int] = set()
    stack: list[object] = [log]
    total = 0
    stop = (log.store, log.store.db)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or any(obj is s for s in stop):
            continue
        seen.add(id(obj))
        if isinstance(obj, bytes | bytearray):
            total += len(obj) // 32
            continue
        if isinstance(obj, type) or type(obj).__name__ in ("module", "function", "method"):
            continue
        stack.extend(gc.get_referents(obj))
    return total


async def test_a_missing_node_fails_the_proof_and_verify_integrity_names_it(
    open_log: OpenLog,
) -> None:
    async with open_log() as log:
        await append_batches(log, [20])
        async with log.store.db.transaction() as conn:
            await conn.execute(
                delete(store.nodes).where(store.nodes.c.level == 2, store.nodes.c.idx == 1)
            )
        with pytest.raises(Exception, match="missing from storage"):
            await log.inclusion_proof(0, None, 0)
        report = await log.verify_integrity()
        assert not report.valid
        assert report.first_bad_index == 4
        assert "tree node" in report.reason


async def test_a_row_rewritten_with_its_hash_in_a_running_log_is_found_by_its_node(
    open_log: OpenLog,
) -> None:
    async with open_log() as log:
        await append_batches(log, [20])
        forged = entry(999).SerializeToString(deterministic=True)
        async with log.store.db.transaction() as conn:
            await conn.execute(
                store.entries.update()
                .where(store.entries.c.idx == 13)
                .values(leaf_data=forged, leaf_hash=leaf_hash(forged))
            )
        report = await log.verify_integrity()
        assert not report.valid
        assert report.first_bad_index == 0  # the one head, of size 20, no longer matches
        # The stored nodes still hold what was committed: the forged entry's proof fails.
        _, size, path, view, _note = await log.inclusion_proof(13, None, 0)
        assert not verify_inclusion(view.leaf_hash, 13, size, path, (await log.checkpoint())[2])


def test_a_frontier_holds_one_hash_per_set_bit_of_its_size() -> None:
    frontier = MerkleFrontier()
    leaves = [leaf_hash(n.to_bytes(4, "big")) for n in range(5000)]
    for count, leaf in enumerate(leaves, 1):
        frontier.append(leaf)
        assert frontier.hash_count == count.bit_count()
    assert frontier.root() == reference_root([n.to_bytes(4, "big") for n in range(5000)])


@pytest.mark.slow
async def test_a_kill_9_during_group_commits_leaves_sqlite_nodes_and_leaves_in_agreement(
    tmp_path: Path,
) -> None:
    await crash_rounds(DatabaseTarget(sqlite_url(tmp_path / "log.db")), tmp_path / "log.key")


@pytest.mark.slow
@pytest.mark.postgres
async def test_a_kill_9_during_group_commits_leaves_postgresql_nodes_and_leaves_in_agreement(
    fresh_postgres_database: str, tmp_path: Path
) -> None:
    await crash_rounds(DatabaseTarget(fresh_postgres_database), tmp_path / "log.key")


async def crash_rounds(target: DatabaseTarget, key_file: Path) -> None:
    key = load_or_create_key(key_file)
    for _round in range(3):
        acked = await run_until_killed(target.url, key_file)
        log = opener(target, key)
        await log.open()
        try:
            assert not log.startup_problem
            assert log.size >= acked
            report = await log.verify_integrity()
            assert report.valid, report.reason
            assert await node_count(log.store.db) == expected_node_count(log.size)
            await assert_matches_reference(log, [(log.size, log.size - 1), (acked, 0)])
        finally:
            await log.close()


async def run_until_killed(url: str, key_file: Path, kill_after: int = 40) -> int:
    """Runs the appender process, kills it with -9 after `kill_after` acknowledged
    appends; returns the largest tree size it acknowledged."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.kernels.immutable_log.crash_appender", url, str(key_file),
        cwd=PROJECT_ROOT, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    acked, count = 0, 0
    try:
        while count < kill_after:
            line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode().split()
            assert line, "the appender ended before it was killed"
            acked, count = max(acked, int(line[1])), count + 1
        process.send_signal(signal.SIGKILL)
        for raw in (await process.stdout.read()).decode().splitlines():
            acked = max(acked, int(raw.split()[1]))
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
    return acked
