"""Events from the bus become index changes: documents stored by domains, shared-memory
contributions (a retraction removes them), workflow outputs, and generic text events."""

from __future__ import annotations

from typing import Any

import pytest

from services.common.errors import NotFound, Unavailable
from services.kernels.librarian.intake import Incoming, Intake
from services.kernels.librarian.librarian import Librarian


class Records:
    """Records a peer holds, by id; `down` makes it unreachable."""

    def __init__(self, records: dict[str, dict[str, Any]] | None = None) -> None:
        self.records = dict(records or {})
        self.down = False

    async def __call__(self, record_id: str) -> dict[str, Any] | None:
        if self.down:
            raise Unavailable("peer unreachable")
        return self.records.get(record_id)


def event(event_type: str, data: dict[str, Any], source: str = "data_domain") -> Incoming:
    return Incoming(
        event_id="e-1", event_type=event_type, source_domain=source, subject="", data=data
    )


@pytest.fixture
def memory() -> Records:
    return Records(
        {
            "c-1": {
                "contribution_id": "c-1",
                "domain_id": "ai_domain",
                "contribution_type": "optimization",
                "content": {"technique": "caching", "improvement": "2x faster"},
                "tags": ["perf"],
            }
        }
    )


@pytest.fixture
def orchestrator() -> Records:
    return Records(
        {
            "ex-1": {
                "execution_id": "ex-1",
                "workflow_id": "wf-1",
                "workflow_name": "process_document",
                "output": {"analyze": {"summary": "the quillwort grows fast"}},
            }
        }
    )


@pytest.fixture
def intake(librarian: Librarian, memory: Records, orchestrator: Records) -> Intake:
    return Intake(librarian, memory, orchestrator)


async def test_a_stored_document_event_is_indexed_under_its_domain(
    intake: Intake, librarian: Librarian
) -> None:
    taken = await intake.take(
        event(
            "data.ingested",
            {"document_id": "doc_1", "title": "Notes", "text": "The port timeout again"},
        )
    )

    assert taken is True
    document = await librarian.get("data_domain.doc_1")
    assert (document.title, document.source) == ("Notes", "data_domain")
    assert document.metadata["event_type"] == "data.ingested"

    await intake.take(event("data.deleted", {"document_id": "doc_1"}))
    with pytest.raises(NotFound):
        await librarian.get("data_domain.doc_1")


async def test_a_contribution_is_read_back_from_memory_and_a_retraction_removes_it(
    intake: Intake, librarian: Librarian
) -> None:
    await intake.take(event("memory.contributed", {"contribution_id": "c-1"}, "memory"))

    hits, _ = await librarian.search("caching", source="memory")
    assert [h.document.document_id for h in hits] == ["memory.c-1"]
    assert hits[0].document.metadata["domain_id"] == "ai_domain"

    await intake.take(event("memory.retracted", {"contribution_id": "c-1"}, "memory"))
    assert (await librarian.search("caching"))[0] == []


async def test_an_event_waits_for_redelivery_while_memory_is_down(
    intake: Intake, librarian: Librarian, memory: Records
) -> None:
    memory.down = True
    assert await intake.take(event("memory.contributed", {"contribution_id": "c-1"})) is False
    memory.down = False
    assert await intake.take(event("memory.contributed", {"contribution_id": "c-1"})) is True
    assert (await librarian.get("memory.c-1")).title == "optimization"


async def test_a_completed_workflow_indexes_its_outputs(
    intake: Intake, librarian: Librarian
) -> None:
    await intake.take(event("workflow.completed", {"execution_id": "ex-1"}, "orchestrator"))

    hits, _ = await librarian.search("quillwort")
    assert [h.document.document_id for h in hits] == ["workflow.ex-1"]
    assert hits[0].document.title == "process_document"


async def test_redelivery_and_unknown_records_change_nothing(
    intake: Intake, librarian: Librarian
) -> None:
    created = event("data.ingested", {"document_id": "doc_1", "text": "hello there"})
    await intake.take(created)
    await intake.take(created)
    await intake.take(event("memory.contributed", {"contribution_id": "gone"}))
    await intake.take(event("data.deleted", {"document_id": "never-was"}))

    assert librarian.store.corpus.documents == 1
    assert len(await librarian.events.pending(10)) == 1


async def test_malformed_events_are_acknowledged_and_skipped(
    intake: Intake, librarian: Librarian
) -> None:
    assert await intake.take(event("memory.contributed", {})) is True
    assert await intake.take(event("data.ingested", {"document_id": "a b", "text": "x"})) is True
    assert await intake.take(event("data.ingested", {"document_id": "doc_2"})) is True
    assert librarian.store.corpus.documents == 0
