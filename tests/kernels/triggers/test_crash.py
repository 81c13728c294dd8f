"""Exactly once per (event, rule) across a kill -9 of the mesh: every event acknowledged
before the kill has its claims on disk, a redelivery of every event claims only what was
missing, and the restarted mesh attempts only the firings the killed one left unfinished."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from services.common.config import sqlite_url
from services.common.outbox import Outbox
from services.common.storage import Database
from services.kernels.triggers.mesh import TriggerMesh
from services.kernels.triggers.model import FiringState, firing_id
from services.kernels.triggers.store import TriggersStore, events_outbox, log_outbox
from tests.kernels.scheduler.doubles import FakeClock, RecordingPeers, ScriptedGate
from tests.kernels.triggers.crash_mesh import RULES, Trusted, uploaded

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[3]
EVENTS = 400
KILL_AFTER = 120


async def run_until_killed(path: Path) -> tuple[set[str], set[str]]:
    """Runs the mesh process, kills it with -9 after KILL_AFTER acknowledgements; returns
    the acknowledged event ids and the keys of the actions it called."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.kernels.triggers.crash_mesh", str(path), str(EVENTS),
        cwd=PROJECT_ROOT, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    acked: set[str] = set()
    fired: set[str] = set()
    try:
        while len(acked) < KILL_AFTER:
            line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode().split()
            assert line, "the mesh process ended before it was killed"
            (acked if line[0] == "acked" else fired).add(line[1])
        process.send_signal(signal.SIGKILL)
        # What it printed before it died still counts: acknowledgements the bus received.
        for raw in (await process.stdout.read()).decode().splitlines():
            kind, name = raw.split()
            (acked if kind == "acked" else fired).add(name)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
    return acked, fired


async def test_a_killed_mesh_loses_no_acknowledged_claim_and_fires_each_pair_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "triggers.db"
    acked, fired_before = await run_until_killed(path)
    assert KILL_AFTER <= len(acked) < EVENTS

    store = TriggersStore(Database(sqlite_url(path)))
    await store.open()
    peers = RecordingPeers()
    mesh = TriggerMesh(
        store,
        ScriptedGate(),
        Trusted(),
        peers,
        Outbox(store.db, events_outbox, "triggers"),
        Outbox(store.db, log_outbox, "triggers"),
        clock=FakeClock(time.time() + 3600),  # every lease of the killed mesh has lapsed
    )
    try:
        await mesh.load()
        # The bus redelivers everything it had not seen acknowledged (and, to be harsh,
        # everything it had).
        for index in range(EVENTS):
            created = await mesh.observe(uploaded(index))
            if f"ev-{index}" in acked:
                assert created == [], f"ev-{index} was acknowledged but its claim was lost"
        finished_before = {
            f.firing_id
            for _, f in await store.list_firings(limit=10 * EVENTS)
            if f.state is FiringState.SUCCEEDED
        }
        while await mesh.drain():
            pass
        firings = [f for _, f in await store.list_firings(limit=10 * EVENTS)]
    finally:
        await store.close()

    expected = {firing_id(f"ev-{i}", r["rule_id"]) for i in range(EVENTS) for r in RULES}
    assert sorted(f.firing_id for f in firings) == sorted(expected)
    assert {f.state for f in firings} == {FiringState.SUCCEEDED}
    fired_after = [key for _, _, key in peers.workflows]
    assert len(fired_after) == len(set(fired_after))
    # The restarted mesh attempted only what the killed one had not finished.
    assert not {key.removeprefix("trigger-") for key in fired_after} & finished_before
    assert {f"trigger-{f}" for f in expected} <= set(fired_after) | fired_before
