"""A trigger mesh in its own process for `test_crash.py`: claims events one after another
on a SQLite file, with its run loop attempting them, printing `acked <event id>` once each
claim returned (when the bus would be acknowledged) and `fired <key>` for each action, until
it is killed.

    python -m tests.kernels.triggers.crash_mesh DATABASE_PATH EVENTS
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from services.common.config import sqlite_url
from services.common.outbox import Outbox
from services.common.storage import Database
from services.kernels.triggers.mesh import TriggerMesh
from services.kernels.triggers.model import event_document
from services.kernels.triggers.store import TriggersStore, events_outbox, log_outbox
from tests.kernels.scheduler.doubles import RecordingPeers, ScriptedGate

RULES = [
    {
        "rule_id": rule_id,
        "pattern": "document.uploaded",
        "action": "workflow",
        "target": {"workflow_id": "document"},
    }
    for rule_id in ("first", "second")
]


def uploaded(index: int) -> dict[str, Any]:
    return event_document(f"ev-{index}", "document.uploaded", "library", "d", 1.0, {"n": index})


class PrintingPeers(RecordingPeers):
    async def start_workflow(
        self, workflow_id: str, data: dict[str, Any], request_id: str
    ) -> dict[str, Any]:
        print(f"fired {request_id}", flush=True)
        return await super().start_workflow(workflow_id, data, request_id)


class Trusted:
    async def score(self, domain_id: str) -> float:
        return 1.0


async def main(path: str, events: int) -> None:
    store = TriggersStore(Database(sqlite_url(Path(path))))
    await store.open()
    mesh = TriggerMesh(
        store,
        ScriptedGate(),
        Trusted(),
        PrintingPeers(),
        Outbox(store.db, events_outbox, "triggers"),
        Outbox(store.db, log_outbox, "triggers"),
    )
    await mesh.load()
    for rule in RULES:
        await mesh.put_rule(rule)
    runner = asyncio.create_task(mesh.run())
    for index in range(events):
        await mesh.observe(uploaded(index))
        print(f"acked ev-{index}", flush=True)
    await runner  # runs until killed


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
