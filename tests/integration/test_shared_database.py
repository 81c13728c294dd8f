"""`grace up --with-examples` with the whole system on one PostgreSQL database.

Every component and the three example domains keep their tables in the same database
(`GRACE_DATABASE_URL`). Each domain must keep to its own tables: its relay publishes only
the events it wrote, signed with its own key, so every event a domain published verifies
against its source's key in the trust kernel. Needs `GRACE_TEST_POSTGRES_URL`; the test
makes a database of its own there and drops it afterwards.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from grace.eventbus.v1 import event_pb2, eventbus_pb2, eventbus_pb2_grpc
from grace.guardian.v1 import guardian_pb2, guardian_pb2_grpc
from services.common.channels import channel
from services.common.event_verification import EventVerifier, SignatureStatus, TrustKeySource
from tests.grace_up import RunningGrace, running_grace
from tests.integration.test_seed_workflows import DOCUMENT_WORKFLOW, _document

pytestmark = pytest.mark.slow

PUBLISHERS = ("data_domain", "ai_domain")
RUNS = 4


async def _history(
    stub: eventbus_pb2_grpc.EventBusServiceStub, source: str
) -> list[event_pb2.Event]:
    events: list[event_pb2.Event] = []
    token = ""
    while True:
        page = await stub.GetHistory(
            eventbus_pb2.GetHistoryRequest(source_domain=source, page_size=1000, page_token=token)
        )
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            return events


async def _run_workflows(grace: RunningGrace) -> None:
    async with grace.http(timeout=60) as http:
        created = await http.post("/domains/workflows/create", json=DOCUMENT_WORKFLOW)
        assert created.status_code == 200, created.text
        workflow_id = created.json()["workflow_id"]
        for n in range(RUNS):
            executed = await http.post(
                f"/domains/workflows/execute/{workflow_id}",
                json={"input": _document(f"sharedword{n}"), "wait": True},
            )
            assert executed.status_code == 200, executed.text
            state = executed.json()["execution"]["state"]
            assert state == "EXECUTION_STATE_SUCCEEDED", executed.text


async def test_on_one_database_every_domain_publishes_only_its_own_events_signed_by_itself(
    tmp_path: Path, fresh_postgres_database: str
) -> None:
    env = {**os.environ, "GRACE_DATABASE_URL": fresh_postgres_database}
    async with running_grace(tmp_path, env=env) as grace:
        keys = TrustKeySource(grace.addresses["trust"], timeout_s=5)
        try:
            # Events leave signed once the trust kernel holds the domain's key.
            for domain_id in PUBLISHERS:
                for _ in range(300):
                    if await keys.active_keys(domain_id):
                        break
                    await asyncio.sleep(0.1)
                else:
                    pytest.fail(f"{domain_id} never registered its key")
            await asyncio.sleep(1.0)  # Each domain's publisher switches to signing.
            # With the bus stopped, every domain's events wait in the database; when it is
            # back, every relay looks at once: each must take only its own domain's rows.
            async with channel(grace.addresses["guardian"]) as guardian_channel:
                guardian = guardian_pb2_grpc.GuardianServiceStub(guardian_channel)
                await guardian.StopComponent(
                    guardian_pb2.StopComponentRequest(component_name="eventbus"), timeout=60
                )
                await _run_workflows(grace)
                await guardian.StartComponent(
                    guardian_pb2.StartComponentRequest(component_name="eventbus"), timeout=60
                )
            async with channel(grace.addresses["eventbus"]) as chan:
                bus = eventbus_pb2_grpc.EventBusServiceStub(chan)
                published: dict[str, list[event_pb2.Event]] = {}
                for domain_id in PUBLISHERS:
                    for _ in range(600):
                        published[domain_id] = await _history(bus, domain_id)
                        if len(published[domain_id]) >= RUNS:
                            break
                        await asyncio.sleep(0.1)
            verifier = EventVerifier(keys, mode="flag")
            for domain_id, events in published.items():
                assert len(events) == RUNS, f"{domain_id} published {len(events)} events"
                statuses = await verifier.check_batch(events)
                bad = [
                    (e.event_type, s.value)
                    for e, s in zip(events, statuses, strict=True)
                    if s is not SignatureStatus.VALID
                ]
                assert not bad, f"{domain_id}: events not signed by their source: {bad}"
        finally:
            await keys.close()
