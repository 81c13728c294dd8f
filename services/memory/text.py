"""The text the shared memory indexes for a contribution.

Words come from the one tokenizer of `services.common.fulltext` (re-exported here), so
what is stored and what is asked are split the same way on both backends.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from services.common.fulltext import (
    MAX_DOCUMENT_CHARS,
    MAX_QUERY_LENGTH,
    MAX_QUERY_WORDS,
    MAX_WORD_LENGTH,
    indexed_text,
    query_words,
    words,
)

__all__ = [
    "MAX_DOCUMENT_CHARS",
    "MAX_QUERY_LENGTH",
    "MAX_QUERY_WORDS",
    "MAX_WORD_LENGTH",
    "document",
    "query_words",
    "struct_strings",
    "words",
]


def struct_strings(value: Any) -> Iterator[str]:
    """Every key and scalar value of a JSON-like value, as strings, depth first."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from struct_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from struct_strings(item)
    elif isinstance(value, bool):
        yield "true" if value else "false"
    elif isinstance(value, float) and value.is_integer():
        yield str(int(value))
    elif value is not None:
        yield str(value)


def document(contribution_type: str, tags: Sequence[str], content: dict[str, Any]) -> str:
    """The text indexed for a contribution: its type, tags, content keys and values."""
    return indexed_text(contribution_type, *tags, *struct_strings(content))
