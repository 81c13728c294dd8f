"""data_domain: stores documents durably and describes them (port 8200).

Actions:
- `ingest` (also `ingest_document`) {"document": "text" | {"text", "title"}, "title"?,
  "source"?} (or the text as `text` or `value`) -> {"document_id",
  "title", "text", "statistics"}; compensation deletes the document. Within a workflow the
  document id derives from the idempotency key, so a step that runs again stores the same
  document instead of a second one.
- `get` {"document_id"} -> the stored document.

Events published: `data.ingested` (document_id, words, title, source, text), `data.deleted`.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

from examples.text import statistics, text_of
from services.sdk import Context, Domain, InvalidArgument, NotFound, field

DOCUMENTS = "documents"
MAX_TEXT = 512 * 1024

domain = Domain(
    "data_domain",
    capabilities=["data", "storage", "ingestion"],
    version="1.0.0",
    description="Stores documents and computes their text statistics",
    port=8200,
)


def _document_id(ctx: Context) -> str:
    if ctx.idempotency_key:
        return "doc_" + hashlib.sha256(ctx.idempotency_key.encode()).hexdigest()[:20]
    return "doc_" + uuid.uuid4().hex[:20]


@domain.action(
    "ingest_document",
    description="Same as ingest (seed 001's name)",
    rerun_if_interrupted=True,
)
@domain.action(
    "ingest",
    description="Stores a document; returns its id and text statistics",
    rerun_if_interrupted=True,
)
async def ingest(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
    text = text_of(data)
    if not text:
        raise InvalidArgument("input.document", "is required: a text, or an object with text")
    if len(text) > MAX_TEXT:
        raise InvalidArgument("input.document", f"must be at most {MAX_TEXT} characters")
    document = data.get("document")
    title = field(data, "title", str, "")
    if not title and isinstance(document, dict):
        title = str(document.get("title", ""))
    document_id = _document_id(ctx)
    record: dict[str, Any] = {
        "document_id": document_id,
        "title": title or text.strip().splitlines()[0][:80],
        "source": field(data, "source", str, ""),
        "text": text,
        "statistics": statistics(text),
        "ingested_at": time.time(),
        "workflow_id": ctx.workflow_id,
    }
    await ctx.store.put(DOCUMENTS, document_id, record)
    # The text travels with the event so that subscribers (the librarian indexes it) need
    # not call back; MAX_TEXT keeps it well inside an event's 1 MiB.
    await ctx.publish(
        "data.ingested",
        {
            "document_id": document_id,
            "words": record["statistics"]["words"],
            "title": record["title"],
            "source": record["source"],
            "text": text,
        },
        subject=document_id,
    )
    ctx.log.info("ingested %s (%d words)", document_id, record["statistics"]["words"])
    return {
        "document_id": document_id,
        "title": record["title"],
        "text": text,
        "statistics": record["statistics"],
    }


@domain.compensate("ingest_document")
@domain.compensate("ingest")
async def delete_ingested(
    ctx: Context, data: dict[str, Any], output: dict[str, Any]
) -> dict[str, Any]:
    document_id = field(output, "document_id", str)
    deleted = await ctx.store.delete(DOCUMENTS, document_id)
    if deleted:
        await ctx.publish("data.deleted", {"document_id": document_id}, subject=document_id)
    ctx.log.info("compensation: document %s %s", document_id, "deleted" if deleted else "gone")
    return {"document_id": document_id, "deleted": deleted}


@domain.action("get", description="Returns a stored document", rerun_if_interrupted=True)
async def get(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
    document_id = field(data, "document_id", str)
    record = await ctx.store.get(DOCUMENTS, document_id)
    if record is None:
        raise NotFound("document", document_id)
    return record


if __name__ == "__main__":
    raise SystemExit(domain.run())
