"""The store on both backends: group-committed snapshots, outbox rows, resumable set."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from services.common import storage
from services.common.config import sqlite_url
from services.common.storage import Database
from services.orchestrator.model import Execution, ExecutionState, StepRun
from services.orchestrator.store import OrchestratorStore
from tests.conftest import DatabaseTarget


def _execution(execution_id: str, state: ExecutionState, created_at: float) -> Execution:
    return Execution(
        execution_id=execution_id,
        workflow_id="wf_1",
        workflow_name="w",
        input={"n": 1},
        steps={"step_1": StepRun("step_1", "a")},
        created_at=created_at,
        state=state,
    )


async def test_concurrent_transitions_share_commits_and_the_latest_snapshot_wins(
    database: DatabaseTarget,
) -> None:
    store = OrchestratorStore(Database(database.url, schema=database.schema))
    await store.open()
    try:
        if store.leases is not None:  # PostgreSQL: transitions are written by their owner.
            for execution_id in ("ex_a", "ex_b"):
                await store.leases.acquire(execution_id)
        running = _execution("ex_a", ExecutionState.RUNNING, 1.0)
        done = _execution("ex_b", ExecutionState.SUCCEEDED, 2.0)
        saves = [
            store.save(
                running.to_json(),
                [("workflow.started", {"id": "ex_a"}, "ex_a", "ex_a/workflow.started")],
            )
        ]
        for n in range(20):
            done.error = f"v{n}"
            saves.append(store.save(done.to_json(), sync=n % 2 == 0))
        await asyncio.gather(*saves)
        assert store.commits < 21
        latest = await store.get_execution("ex_b")
        assert latest is not None
        assert latest["error"] == "v19"
        unfinished = await store.load_unfinished()
        assert [s["execution_id"] for s in unfinished] == ["ex_a"]
        page = await store.list_executions(10, None, "wf_1", "")
        assert [s["execution_id"] for s in page] == ["ex_b", "ex_a"]
        assert await store.counts_by_state() == {"RUNNING": 1, "SUCCEEDED": 1}
        assert [e.event_type for e in await store.outbox.pending(10)] == ["workflow.started"]
    finally:
        await store.close()


async def test_on_sqlite_a_flushed_transition_is_on_disk_before_save_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    monkeypatch.setattr(storage, "_fdatasync", lambda fd: synced.append(os.fstat(fd).st_ino))
    store = OrchestratorStore(Database(sqlite_url(tmp_path / "o.db")))
    await store.open()
    try:
        execution = _execution("ex_a", ExecutionState.RUNNING, 1.0)
        await store.save(execution.to_json(), sync=False)  # a step transition
        assert synced == []
        execution.state = ExecutionState.SUCCEEDED
        await store.save(execution.to_json(), sync=True)
        assert synced == [os.stat(tmp_path / "o.db-wal").st_ino]
        saved = await store.get_execution("ex_a")
        assert saved is not None
        assert saved["state"] == "SUCCEEDED"
    finally:
        await store.close()


async def test_on_sqlite_a_large_batch_of_transitions_is_committed_on_the_writer_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inline: list[bool] = []
    commit = storage.SqliteWriter.commit

    async def recording(self: storage.SqliteWriter, *args: Any, **kwargs: Any) -> Any:
        inline.append(kwargs.get("inline", True))
        return await commit(self, *args, **kwargs)

    monkeypatch.setattr(storage.SqliteWriter, "commit", recording)
    store = OrchestratorStore(Database(sqlite_url(tmp_path / "o.db")))
    await store.open()
    try:
        executions = [
            _execution(f"ex_{n}", ExecutionState.SUCCEEDED, float(n))
            for n in range(storage.SQLITE_INLINE_MAX_ROWS + 8)
        ]
        await store.save(executions[0].to_json(), sync=True)  # a batch of one: inline
        # Saved together, the rest form one batch past the bound while the first commits.
        await asyncio.gather(*(store.save(e.to_json(), sync=True) for e in executions))
        assert inline[0] is True
        assert False in inline
        page = await store.list_executions(100, None, "wf_1", "")
        assert len(page) == len(executions)
    finally:
        await store.close()
