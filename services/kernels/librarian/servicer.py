"""gRPC adapter of the librarian: proto in, core call, proto out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import grpc

from grace.kernels.librarian.v1 import librarian_pb2 as pb
from grace.kernels.librarian.v1 import librarian_pb2_grpc
from services.common.errors import InvalidArgument
from services.common.timestamps import to_timestamp
from services.common.validation import require_struct_size
from services.kernels.domain import dict_to_struct, struct_to_dict
from services.kernels.librarian.librarian import MAX_METADATA_BYTES, Librarian
from services.kernels.librarian.model import (
    Document,
    Hit,
    IndexResult,
    NewDocument,
    SearchMode,
    Stats,
)

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

MODE_TO_PROTO = {mode: pb.SearchMode.Value(f"SEARCH_MODE_{mode.name}") for mode in SearchMode}
FIELD_FROM_PROTO: dict[int, str] = {
    pb.SEARCH_FIELD_TITLE: "title",
    pb.SEARCH_FIELD_TEXT: "text",
    pb.SEARCH_FIELD_METADATA: "metadata",
}


def document_to_proto(document: Document, *, with_text: bool = True) -> pb.Document:
    """The wire form of a document."""
    return pb.Document(
        id=document.document_id,
        title=document.title,
        text=document.text if with_text else "",
        source=document.source,
        metadata=dict_to_struct(document.metadata),
        words=document.words,
        create_time=to_timestamp(document.created_at),
        update_time=to_timestamp(document.updated_at),
    )


def hit_to_proto(hit: Hit) -> pb.SearchHit:
    """The wire form of a search hit (the document without its text)."""
    return pb.SearchHit(
        document=document_to_proto(hit.document, with_text=False),
        score=hit.score,
        highlights=[
            pb.Highlight(
                field=h.field,
                fragment=h.fragment,
                spans=[pb.Span(start=s.start, end=s.end) for s in h.spans],
            )
            for h in hit.highlights
        ],
    )


def result_to_proto(result: IndexResult) -> pb.IndexResult:
    """The wire form of an index result."""
    return pb.IndexResult(id=result.document_id, created=result.created, changed=result.changed)


def stats_to_proto(stats: Stats, subscriptions: Sequence[str]) -> pb.GetLibrarianStatsResponse:
    """The wire form of the statistics."""
    return pb.GetLibrarianStatsResponse(
        documents=stats.documents,
        words=stats.words,
        sources=[pb.SourceCount(source=s.source, documents=s.documents) for s in stats.sources],
        backend=stats.backend,
        mode=MODE_TO_PROTO[stats.mode],
        subscriptions=list(subscriptions),
    )


def new_document(message: pb.NewDocument | pb.IndexRequest, field: str) -> NewDocument:
    """A submitted document, its metadata size checked."""
    require_struct_size(f"{field}.metadata", message.metadata, max_bytes=MAX_METADATA_BYTES)
    return NewDocument(
        document_id=message.id,
        text=message.text,
        title=message.title,
        source=message.source,
        metadata=struct_to_dict(message.metadata),
    )


def metadata_filters(entries: Sequence[str]) -> dict[str, str]:
    """`key=value` entries as a map; InvalidArgument for an entry without '='."""
    filters: dict[str, str] = {}
    for i, entry in enumerate(entries):
        key, sep, value = entry.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"metadata[{i}]", "must be key=value")
        filters[key] = value
    return filters


def search_fields(fields: Sequence[int]) -> list[str]:
    """Proto fields as the core's names; InvalidArgument for UNSPECIFIED or unknown."""
    names = []
    for value in fields:
        name = FIELD_FROM_PROTO.get(value)
        if name is None:
            raise InvalidArgument("fields", "must be SEARCH_FIELD_TITLE, _TEXT or _METADATA")
        names.append(name)
    return names


class LibrarianServicer(librarian_pb2_grpc.LibrarianServiceServicer):
    """Serves LibrarianService over the core.

    Args:
        librarian: The core.
        subscriptions: Event patterns indexed from the bus (reported by the stats).
    """

    def __init__(self, librarian: Librarian, subscriptions: Sequence[str] = ()) -> None:
        self._librarian = librarian
        self._subscriptions = list(subscriptions)

    async def Index(self, request: pb.IndexRequest, context: Context) -> pb.IndexResponse:
        (result,) = await self._librarian.index([new_document(request, "document")])
        return pb.IndexResponse(result=result_to_proto(result))

    async def IndexBatch(
        self, request: pb.IndexBatchRequest, context: Context
    ) -> pb.IndexBatchResponse:
        documents = [new_document(d, f"documents[{i}]") for i, d in enumerate(request.documents)]
        results = await self._librarian.index(documents)
        return pb.IndexBatchResponse(results=[result_to_proto(r) for r in results])

    async def GetDocument(
        self, request: pb.GetDocumentRequest, context: Context
    ) -> pb.GetDocumentResponse:
        document = await self._librarian.get(request.id)
        return pb.GetDocumentResponse(document=document_to_proto(document))

    async def DeleteDocument(
        self, request: pb.DeleteDocumentRequest, context: Context
    ) -> pb.DeleteDocumentResponse:
        await self._librarian.delete(request.id)
        return pb.DeleteDocumentResponse(id=request.id)

    async def Search(self, request: pb.SearchRequest, context: Context) -> pb.SearchResponse:
        return await search(self._librarian, request)

    async def FindSimilar(
        self, request: pb.FindSimilarRequest, context: Context
    ) -> pb.FindSimilarResponse:
        found_id, hits = await self._librarian.similar(
            request.id, limit=request.limit or 10, source=request.source
        )
        return pb.FindSimilarResponse(
            hits=[hit_to_proto(h) for h in hits],
            mode=MODE_TO_PROTO[self._librarian.mode],
            id=found_id,
        )

    async def GetLibrarianStats(
        self, request: pb.GetLibrarianStatsRequest, context: Context
    ) -> pb.GetLibrarianStatsResponse:
        return stats_to_proto(await self._librarian.stats(), self._subscriptions)


async def search(librarian: Librarian, request: pb.SearchRequest) -> pb.SearchResponse:
    """Search as the wire sees it (shared by the servicer and the HTTP front)."""
    hits, token = await librarian.search(
        request.query,
        fields=search_fields(request.fields),
        source=request.source,
        metadata=metadata_filters(request.metadata),
        size=request.page_size,
        token=request.page_token,
    )
    terms = librarian.terms(request.query)
    return pb.SearchResponse(
        hits=[hit_to_proto(h) for h in hits],
        next_page_token=token,
        mode=MODE_TO_PROTO[librarian.mode],
        terms=terms,
    )
