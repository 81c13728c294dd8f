"""What the librarian indexes from the event bus: events in, index changes out.

The librarian subscribes to configurable patterns (by default the five below) and the bus
pushes matching events to its `DeliverEvent`. Each event becomes at most one change:

- `data.ingested` (a domain stored a document; its data carries document_id, text and
  title): index `<source domain>.<document_id>`.
- `data.deleted`: delete `<source domain>.<document_id>`.
- `memory.contributed`: index `memory.<contribution_id>` (the contribution is read back
  from shared memory).
- `memory.retracted`: delete `memory.<contribution_id>`.
- `workflow.completed`: index `workflow.<execution_id>` (the execution's outputs are read
  back from the orchestrator).

Any other event matched by a configured pattern is indexed when its data carries a `text`
string (id `<source domain>.<data.document_id or subject or event id>`), and an event type
ending in `.deleted` with a `document_id` deletes that document. Redelivery is harmless:
indexing the same content again changes nothing and deleting twice is a no-op.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from services.common.errors import InvalidArgument, NotFound, Unavailable
from services.common.validation import ID_PATTERN, MAX_ID_LENGTH
from services.kernels.librarian.librarian import MAX_TEXT_CHARS, MEMORY_PREFIX, Librarian
from services.kernels.librarian.model import NewDocument

log = logging.getLogger(__name__)

DEFAULT_PATTERNS = (
    "data.ingested",
    "data.deleted",
    "memory.contributed",
    "memory.retracted",
    "workflow.completed",
)

MAX_EXTRA_METADATA = 32
"""Scalar fields of a generic event kept as the document's metadata."""

MEMORY_SOURCE = MEMORY_PREFIX
WORKFLOW_SOURCE = "workflow"


@dataclass(frozen=True)
class Incoming:
    """The parts of a bus event the intake reads."""

    event_id: str
    event_type: str
    source_domain: str
    subject: str
    data: Mapping[str, Any]


Fetch = Callable[[str], Awaitable[dict[str, Any] | None]]
"""Reads a record back from its owner by id: a JSON-like dict, None when it is gone;
raises Unavailable when the owner cannot answer now."""


def _text(value: Any) -> str:
    """Readable text of a JSON-like value: `key: value` lines, nested values as JSON."""
    if isinstance(value, dict):
        lines = []
        for key, item in value.items():
            shown = item if isinstance(item, str) else json.dumps(item, ensure_ascii=False)
            lines.append(f"{key}: {shown}")
        return "\n".join(lines)
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def document_id(*parts: str) -> str | None:
    """`part.part...` when that is a valid id, else None."""
    value = ".".join(p for p in parts if p)
    if value and len(value) <= MAX_ID_LENGTH and ID_PATTERN.fullmatch(value):
        return value
    return None


class Intake:
    """Turns delivered events into index changes.

    Args:
        librarian: The core.
        contribution: Reads a shared-memory contribution by id.
        execution: Reads a workflow execution by id.
    """

    def __init__(self, librarian: Librarian, contribution: Fetch, execution: Fetch) -> None:
        self.librarian = librarian
        self._contribution = contribution
        self._execution = execution

    async def take(self, event: Incoming) -> bool:
        """Applies one event; False asks the bus to redeliver it later (a peer is down)."""
        try:
            await self._apply(event)
        except Unavailable as exc:
            log.warning("librarian: %s %s deferred: %s", event.event_type, event.event_id, exc)
            return False
        except (InvalidArgument, NotFound) as exc:
            # A malformed event will not improve on redelivery.
            log.warning("librarian: %s %s skipped: %s", event.event_type, event.event_id, exc)
        return True

    async def _apply(self, event: Incoming) -> None:
        data = event.data
        kind = event.event_type
        if kind in ("memory.contributed", "memory.retracted"):
            contribution_id = str(data.get("contribution_id", ""))
            doc_id = document_id(MEMORY_SOURCE, contribution_id)
            if doc_id is None:
                raise InvalidArgument("data.contribution_id", "is missing or not an id")
            if kind == "memory.retracted":
                await self.librarian.delete(doc_id, missing_ok=True)
                return
            found = await self._contribution(contribution_id)
            if found is None or found.get("retracted"):
                await self.librarian.delete(doc_id, missing_ok=True)
                return
            await self._index(
                NewDocument(
                    document_id=doc_id,
                    title=str(found.get("contribution_type", "")),
                    text=_text(found.get("content", {}))[:MAX_TEXT_CHARS],
                    source=MEMORY_SOURCE,
                    metadata={
                        "contribution_id": contribution_id,
                        "domain_id": str(found.get("domain_id", "")),
                        "contribution_type": str(found.get("contribution_type", "")),
                        "tags": list(found.get("tags", [])),
                    },
                )
            )
            return
        if kind == "workflow.completed":
            execution_id = str(data.get("execution_id", ""))
            doc_id = document_id(WORKFLOW_SOURCE, execution_id)
            if doc_id is None:
                raise InvalidArgument("data.execution_id", "is missing or not an id")
            found = await self._execution(execution_id)
            if found is None:
                return
            await self._index(
                NewDocument(
                    document_id=doc_id,
                    title=str(found.get("workflow_name", "")),
                    text=_text(found.get("output", {}))[:MAX_TEXT_CHARS],
                    source=WORKFLOW_SOURCE,
                    metadata={
                        "execution_id": execution_id,
                        "workflow_id": str(found.get("workflow_id", "")),
                        "workflow_name": str(found.get("workflow_name", "")),
                    },
                )
            )
            return
        own = str(data.get("document_id", "")) or event.subject or event.event_id
        doc_id = document_id(event.source_domain, own)
        if doc_id is None:
            raise InvalidArgument("data.document_id", "does not make a valid document id")
        if kind.endswith(".deleted"):
            await self.librarian.delete(doc_id, missing_ok=True)
            return
        body = data.get("text")
        if not isinstance(body, str) or not body.strip():
            log.debug("librarian: %s %s carries no text", kind, event.event_id)
            return
        extra = {
            k: v
            for k, v in list(data.items())[:MAX_EXTRA_METADATA]
            if k not in ("text", "title", "document_id") and not isinstance(v, dict | list)
        }
        await self._index(
            NewDocument(
                document_id=doc_id,
                title=str(data.get("title", ""))[:1024],
                text=body[:MAX_TEXT_CHARS],
                source=event.source_domain,
                metadata={**extra, "event_type": kind},
            )
        )

    async def _index(self, document: NewDocument) -> None:
        await self.librarian.index([document])
        log.debug("librarian: indexed %s", document.document_id)
