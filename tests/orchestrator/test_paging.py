"""Listing executions whose payloads are large: pages end early instead of passing the
message limit (a page of 1000 was refused as "Sent message larger than max")."""

from __future__ import annotations

from grace.orchestrator.v1 import orchestrator_pb2 as pb
from tests.orchestrator.conftest import World
from tests.orchestrator.test_workflows import Stub, run

MESSAGE_LIMIT = 4 * 1024 * 1024


async def test_executions_with_large_payloads_list_in_pages_within_the_message_limit(
    world: World, orchestrator: Stub
) -> None:
    await world.add_domain("echo")
    body = {"name": "bulky", "steps": [{"domain_id": "echo", "action": "echo"}]}
    started = []
    for n in range(4):
        # Input, step input, step output and output each hold the ~400 kB payload.
        ex = await run(orchestrator, body, {"n": n, "blob": "x" * 400_000})
        assert ex.state == pb.EXECUTION_STATE_SUCCEEDED
        started.append(ex.execution_id)
    listed: list[str] = []
    token = ""
    for _ in range(10):
        page = await orchestrator.ListExecutions(
            pb.ListExecutionsRequest(page_size=1000, page_token=token)
        )
        assert page.ByteSize() < MESSAGE_LIMIT
        assert page.executions
        listed.extend(e.execution_id for e in page.executions)
        token = page.next_page_token
        if not token:
            break
    assert sorted(listed) == sorted(started)
    assert len(listed) == len(set(listed))
