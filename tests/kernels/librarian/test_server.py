"""The librarian over gRPC: its service, DomainService actions and events, and the shared
port that answers both gRPC and the seed's plain `curl localhost:8130/health`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grace.domain.v1 import domain_pb2, domain_pb2_grpc
from grace.eventbus.v1 import event_pb2
from grace.kernels.librarian.v1 import librarian_pb2 as pb
from grace.kernels.librarian.v1 import librarian_pb2_grpc
from services.common.channels import channel
from services.common.outbox import OutboxEvent
from services.kernels.librarian.config import LibrarianConfig
from services.kernels.librarian.server import LibrarianServer
from tests.support import server_config, serving


class Recording:
    """Stands in for the event bus: keeps what the relay publishes."""

    def __init__(self) -> None:
        self.events: list[OutboxEvent] = []

    async def publish(self, events: Sequence[OutboxEvent]) -> None:
        self.events.extend(events)


def struct(value: dict[str, object]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(value)
    return result


@pytest.fixture
def bus() -> Recording:
    return Recording()


@pytest.fixture
async def librarian(
    tmp_path: Path, bus: Recording
) -> AsyncIterator[tuple[LibrarianServer, grpc.aio.Channel]]:
    """A librarian with its HTTP front, and a channel through the front (its public port)."""
    config = LibrarianConfig(
        server=server_config("librarian", tmp_path),
        subscribe=True,
        registration=None,
        relay_interval_s=0.05,
    )
    service = LibrarianServer(config, bus=bus)
    async with (
        serving(service.grpc_config(), service),
        channel(f"127.0.0.1:{service.public_port}") as chan,
    ):
        yield service, chan


@pytest.fixture
def stub(
    librarian: tuple[LibrarianServer, grpc.aio.Channel],
) -> librarian_pb2_grpc.LibrarianServiceStub:
    return librarian_pb2_grpc.LibrarianServiceStub(librarian[1])


@pytest.fixture
def http_url(librarian: tuple[LibrarianServer, grpc.aio.Channel]) -> str:
    return f"http://127.0.0.1:{librarian[0].public_port}"


async def test_documents_indexed_over_grpc_are_found_with_highlights(
    stub: librarian_pb2_grpc.LibrarianServiceStub,
) -> None:
    await stub.Index(
        pb.IndexRequest(
            id="ops-1",
            title="Port timeout",
            text="Restarting fixed the port timeout.",
            source="data_domain",
            metadata=struct({"lang": "en"}),
        )
    )
    batch = await stub.IndexBatch(
        pb.IndexBatchRequest(
            documents=[
                pb.NewDocument(id="ops-2", text="A timeout in the cache", source="memory"),
                pb.NewDocument(id="ops-1", title="Port timeout", text="unchanged? no, changed"),
            ]
        )
    )
    assert [(r.id, r.created, r.changed) for r in batch.results] == [
        ("ops-2", True, True),
        ("ops-1", False, True),
    ]

    found = await stub.Search(
        pb.SearchRequest(query="timeout", fields=[pb.SEARCH_FIELD_TITLE, pb.SEARCH_FIELD_TEXT])
    )
    assert [h.document.id for h in found.hits] == ["ops-1", "ops-2"]
    assert found.mode == pb.SEARCH_MODE_FULL_TEXT
    assert list(found.terms) == ["timeout"]
    assert found.hits[0].document.text == ""  # results carry no text; GetDocument does
    title = found.hits[0].highlights[0]
    assert (title.field, title.fragment[title.spans[0].start : title.spans[0].end]) == (
        "title",
        "timeout",
    )
    filtered = await stub.Search(pb.SearchRequest(query="timeout", source="memory"))
    assert [h.document.id for h in filtered.hits] == ["ops-2"]

    document = (await stub.GetDocument(pb.GetDocumentRequest(id="ops-1"))).document
    assert document.text == "unchanged? no, changed"


async def test_bad_input_is_invalid_argument_and_unknown_ids_not_found(
    stub: librarian_pb2_grpc.LibrarianServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Search(pb.SearchRequest(query="  !! "))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "query" in (caught.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Search(pb.SearchRequest(query="x", metadata=["no-equals-sign"]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "metadata[0]" in (caught.value.details() or "")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Index(pb.IndexRequest(id="bad id", text="x"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    for call in (
        stub.GetDocument(pb.GetDocumentRequest(id="missing")),
        stub.DeleteDocument(pb.DeleteDocumentRequest(id="missing")),
        stub.FindSimilar(pb.FindSimilarRequest(id="missing")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_changes_are_published_as_events(
    stub: librarian_pb2_grpc.LibrarianServiceStub, bus: Recording
) -> None:
    await stub.Index(pb.IndexRequest(id="ops-1", text="port timeout"))
    await stub.DeleteDocument(pb.DeleteDocumentRequest(id="ops-1"))

    for _ in range(100):
        if len(bus.events) == 2:
            break
        await asyncio.sleep(0.05)
    assert [(e.event_type, e.subject) for e in bus.events] == [
        ("librarian.document.indexed", "ops-1"),
        ("librarian.document.deleted", "ops-1"),
    ]


async def test_workflow_steps_index_search_and_find_similar_through_domain_service(
    librarian: tuple[LibrarianServer, grpc.aio.Channel],
    stub: librarian_pb2_grpc.LibrarianServiceStub,
) -> None:
    domain = domain_pb2_grpc.DomainServiceStub(librarian[1])
    described = await domain.DescribeDomain(domain_pb2.DescribeDomainRequest())
    assert set(described.capabilities) == {"search", "indexing", "knowledge"}
    assert {a.name for a in described.actions} == {"index", "search", "similar", "delete"}

    for i, text in enumerate(["gateway port timeout", "port timeout on the gateway", "basil"]):
        await domain.Execute(
            domain_pb2.ExecuteRequest(
                action="index", input=struct({"id": f"d{i}", "text": text, "source": "wf"})
            )
        )
    searched = await domain.Execute(
        domain_pb2.ExecuteRequest(action="search", input=struct({"query": "timeout"}))
    )
    ids = [h["document"]["id"] for h in searched.output["hits"]]
    assert sorted(ids) == ["d0", "d1"]

    similar = await domain.Execute(
        domain_pb2.ExecuteRequest(action="similar", input=struct({"id": "d0"}))
    )
    assert [h["document"]["id"] for h in similar.output["hits"]] == ["d1"]

    # Compensating an index step removes the document it created.
    undone = await domain.Compensate(
        domain_pb2.CompensateRequest(
            action="index",
            input=struct({"id": "d2", "text": "basil"}),
            output=struct({"id": "d2", "created": True, "changed": True}),
        )
    )
    assert undone.output["removed"] is True
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetDocument(pb.GetDocumentRequest(id="d2"))


async def test_a_delivered_event_is_indexed(
    librarian: tuple[LibrarianServer, grpc.aio.Channel],
    stub: librarian_pb2_grpc.LibrarianServiceStub,
) -> None:
    domain = domain_pb2_grpc.DomainServiceStub(librarian[1])
    delivered = await domain.DeliverEvent(
        domain_pb2.DeliverEventRequest(
            event=event_pb2.Event(
                id="ev-1",
                event_type="data.ingested",
                source_domain="data_domain",
                data=struct({"document_id": "doc_9", "text": "the quillwort grows"}),
            )
        )
    )

    assert delivered.outcome == domain_pb2.DELIVERY_OUTCOME_ACK
    found = await stub.Search(pb.SearchRequest(query="quillwort"))
    assert [h.document.id for h in found.hits] == ["data_domain.doc_9"]
    stats = await stub.GetLibrarianStats(pb.GetLibrarianStatsRequest())
    assert "data.ingested" in stats.subscriptions
    assert stats.documents == 1


async def test_the_shared_port_answers_plain_http_health_but_keeps_data_behind_auth(
    http_url: str, stub: librarian_pb2_grpc.LibrarianServiceStub
) -> None:
    await stub.Index(pb.IndexRequest(id="ops-1", text="Restarting fixed the port timeout."))
    async with httpx.AsyncClient(base_url=http_url, timeout=10) as client:
        health = await client.get("/health")
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "kernel": "librarian"}
        # Plain HTTP carries no credential: in a secure Grace search and stats are the
        # authenticated gateway's (the test servers are secure).
        found = await client.get("/search", params={"query": "timeout"})
        assert found.status_code == 401
        assert "bearer token" in found.json()["error"]["message"]
        assert (await client.get("/stats")).status_code == 401
        assert (await client.post("/health")).status_code == 405


async def test_grpc_health_is_served_through_the_shared_port(
    librarian: tuple[LibrarianServer, grpc.aio.Channel],
) -> None:
    health = health_pb2_grpc.HealthStub(librarian[1])
    answer = await health.Check(
        health_pb2.HealthCheckRequest(service="grace.kernels.librarian.v1.LibrarianService")
    )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
