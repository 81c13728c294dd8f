"""memory_domain: the organism's memory of analyses (port 8201).

Actions:
- `store` {"summary", "keywords", "sentiment", "document_id"?, "title"?} (the output of
  `ai_domain.analyze`) -> {"contribution_id", "confidence"}: contributes the analysis to the
  shared memory as an `insight`. Compensation retracts that contribution, so a rolled-back
  workflow leaves no knowledge behind: no query, list or statistic sees it any more.
- `store_with_metadata` (seed 001): the same, with the analysis's metadata (document id,
  title, statistics, workflow, execution and step) in the contribution's `metadata`.
- `search_similar` (also `search`) {"query" | "text" | "code" | "document"} ->
  {"query", "results"}: asks the shared memory for what it knows about the text's keywords.
  Given {"id"} instead (a document indexed by the librarian, or a contribution id), it asks
  the librarian for the documents nearest to that one -> {"id", "query": "", "results"}.
- `recent_events` {"limit"?} -> {"events"}: the `ml.*` events this domain observed.

Event handlers: `ml.*` keeps a durable journal of ML events (one entry per event id).
"""

from __future__ import annotations

import os
from typing import Any

import grpc

from examples.text import keywords, text_of
from grace.kernels.librarian.v1 import librarian_pb2, librarian_pb2_grpc
from services.common.channels import channel
from services.common.config import peer_address
from services.sdk import Context, Domain, Event, InvalidArgument, NotFound, Unavailable, field

ML_EVENTS = "ml_events"

domain = Domain(
    "memory_domain",
    capabilities=["memory", "knowledge", "search"],
    version="1.0.0",
    description="Stores analyses in the shared memory and finds similar ones",
    port=8201,
)


def _keyword_words(value: object) -> list[str]:
    if not isinstance(value, list):
        return []
    return [str(k["word"] if isinstance(k, dict) else k) for k in value][:10]


@domain.action(
    "store", description="Contributes an analysis to the shared memory", rerun_if_interrupted=True
)
async def store(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
    summary = field(data, "summary", str, "")
    words = _keyword_words(data.get("keywords"))
    if not summary and not words:
        raise InvalidArgument("input.summary", "is required (the output of ai_domain.analyze)")
    sentiment = data.get("sentiment")
    label = str(sentiment.get("label", "")) if isinstance(sentiment, dict) else ""
    content: dict[str, Any] = {
        "summary": summary,
        "keywords": words,
        "sentiment": label,
        "document_id": field(data, "document_id", str, ""),
        "title": field(data, "title", str, ""),
        "workflow_id": ctx.workflow_id,
    }
    if isinstance(data.get("metadata"), dict):
        content["metadata"] = data["metadata"]
    tags = ["analysis", *([label] if label else [])]
    knowledge = await ctx.memory.contribute("insight", content, tags=tags, confidence=0.6)
    ctx.log.info("stored analysis as contribution %s", knowledge.id)
    return {"contribution_id": knowledge.id, "confidence": knowledge.confidence}


# What `store_with_metadata` keeps beside the analysis: where it came from.
METADATA_FIELDS = ("document_id", "title", "statistics", "source", "context_results")


@domain.action(
    "store_with_metadata",
    description="Contributes an analysis with its metadata (document, statistics, workflow)",
)
async def store_with_metadata(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
    metadata = {name: data[name] for name in METADATA_FIELDS if name in data}
    metadata.update(
        {"workflow_id": ctx.workflow_id, "execution_id": ctx.execution_id, "step_id": ctx.step_id}
    )
    stored = await store(ctx, {**data, "metadata": metadata})
    return {**stored, "metadata": metadata}


@domain.compensate("store_with_metadata")
@domain.compensate("store")
async def retract(ctx: Context, data: dict[str, Any], output: dict[str, Any]) -> dict[str, Any]:
    contribution_id = field(output, "contribution_id", str)
    # Retracting is idempotent in the memory, and its request id derives from this
    # compensation's idempotency key: a retried or replayed compensation changes nothing.
    try:
        knowledge = await ctx.memory.retract(
            contribution_id,
            f"rolled back: workflow execution {ctx.execution_id or '-'} failed",
        )
    except NotFound:
        # The memory no longer has it (its data was reset): there is nothing to undo.
        ctx.log.warning("compensation: contribution %s is unknown to memory", contribution_id)
        return {"contribution_id": contribution_id, "retracted": False, "found": False}
    ctx.log.info("compensation: contribution %s retracted", contribution_id)
    return {"contribution_id": contribution_id, "retracted": knowledge.retracted, "found": True}


_librarian: grpc.aio.Channel | None = None


def _librarian_stub() -> librarian_pb2_grpc.LibrarianServiceAsyncStub:
    """The librarian at GRACE_LIBRARIAN_ADDR, on a channel opened at first use (channels
    bind to the running loop)."""
    global _librarian
    if _librarian is None:
        _librarian = channel(peer_address(os.environ, "librarian"))
    return librarian_pb2_grpc.LibrarianServiceStub(_librarian)


async def _similar_documents(document_id: str, limit: int) -> dict[str, Any]:
    try:
        found = await _librarian_stub().FindSimilar(
            librarian_pb2.FindSimilarRequest(id=document_id, limit=limit), timeout=10.0
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            raise NotFound("document", document_id) from None
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
            raise InvalidArgument("input.id", exc.details() or "is not valid") from None
        raise Unavailable(f"librarian: {exc.code().name}: {exc.details()}") from None
    return {
        "id": found.id,
        "query": "",
        "results": [
            {
                "id": hit.document.id,
                "title": hit.document.title,
                "source": hit.document.source,
                "score": hit.score,
            }
            for hit in found.hits
        ],
    }


@domain.action("search", description="Same as search_similar", rerun_if_interrupted=True)
@domain.action(
    "search_similar",
    description="Finds knowledge similar to a text or query, or documents similar to an id",
    rerun_if_interrupted=True,
)
async def search_similar(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
    limit = int(field(data, "limit", float, 10.0))
    if not 1 <= limit <= 100:
        raise InvalidArgument("input.limit", "must be between 1 and 100")
    document_id = field(data, "id", str, "").strip()
    if document_id:
        return await _similar_documents(document_id, limit)
    query = field(data, "query", str, "").strip()
    if not query:
        # A text is searched by its most frequent word: the memory matches every word of
        # a query, so one strong word finds more than a sentence would.
        top = keywords(text_of(data), limit=1)
        query = top[0]["word"] if top else ""
    if not query:
        return {"query": "", "results": []}
    found = await ctx.memory.query(query, limit=limit)
    return {
        "query": query,
        "results": [
            {
                "id": k.id,
                "domain_id": k.domain_id,
                "type": k.contribution_type,
                "confidence": k.confidence,
                "score": k.score,
                "content": k.content,
            }
            for k in found
        ],
    }


@domain.action(
    "recent_events", description="The ml.* events this domain observed", rerun_if_interrupted=True
)
async def recent_events(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
    limit = int(field(data, "limit", float, 50.0))
    entries = await ctx.store.list(ML_EVENTS, limit=max(1, min(limit, 1000)))
    return {"events": [value for _, value in entries]}


@domain.on_event("ml.*")
async def remember_ml_event(ctx: Context, event: Event) -> None:
    # Keyed by sequence then id: a redelivered event overwrites its own entry.
    key = f"{event.sequence:016d}:{event.id}"
    await ctx.store.put(
        ML_EVENTS,
        key,
        {
            "id": event.id,
            "event_type": event.event_type,
            "source_domain": event.source_domain,
            "time": event.time,
            "data": event.data,
        },
    )


if __name__ == "__main__":
    raise SystemExit(domain.run())
