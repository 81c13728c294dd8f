"""Values of the librarian: documents, searches, hits and statistics."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

FIELDS = ("title", "text", "metadata")
"""The searchable fields of a document, in the order the index stores them."""


class SearchMode(enum.Enum):
    """How a search ranked its results."""

    FULL_TEXT = "full_text"


@dataclass(frozen=True)
class NewDocument:
    """A document to index (validated by the core).

    Attributes:
        document_id: Caller-chosen id; indexing an existing id replaces that document.
        text: The body.
        title: Optional title (weighs double in the ranking).
        source: Where it came from (a domain id, "memory", "workflow"); filterable.
        metadata: JSON object; its top-level scalar values are filterable.
    """

    document_id: str
    text: str
    title: str = ""
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Document:
    """A stored document."""

    document_id: str
    text: str
    title: str
    source: str
    metadata: dict[str, Any]
    words: int
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class IndexResult:
    """What indexing one document did."""

    document_id: str
    created: bool
    changed: bool


@dataclass(frozen=True)
class SearchQuery:
    """A validated search.

    Attributes:
        terms: Distinct normalized words, all required.
        fields: Fields the words must be in (all fields when empty).
        source: Only documents from this source; empty means any.
        metadata: Only documents whose metadata has every key = value.
    """

    terms: tuple[str, ...]
    fields: tuple[str, ...] = ()
    source: str = ""
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Span:
    """A matched word inside a fragment: [start, end) in characters."""

    start: int
    end: int


@dataclass(frozen=True)
class Highlight:
    """A fragment of one field around matched words."""

    field: str
    fragment: str
    spans: tuple[Span, ...]


@dataclass(frozen=True)
class Hit:
    """One search result."""

    document: Document
    score: float
    highlights: tuple[Highlight, ...] = ()


@dataclass(frozen=True)
class SourceCount:
    """How many documents one source holds."""

    source: str
    documents: int


@dataclass(frozen=True)
class Stats:
    """The size of the index."""

    documents: int
    words: int
    sources: tuple[SourceCount, ...]
    backend: str
    mode: SearchMode
