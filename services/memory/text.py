"""Words for the full-text index: one tokenizer for what is stored and what is asked.

Both backends receive text this module already split and normalized (lower case, accents
removed, words of letters and digits only, '_' and every other character a separator), so
SQLite FTS5 and PostgreSQL's `simple` text search configuration see the same words and
match the same contributions. "port timeout" finds `{"issue": "port_timeout"}`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from services.common.errors import InvalidArgument

MAX_QUERY_LENGTH = 1024
MAX_QUERY_WORDS = 32
# A word longer than this is cut: neither index gains from megabyte-long tokens, and
# PostgreSQL refuses lexemes over 2 KiB.
MAX_WORD_LENGTH = 64
# Only this much of a contribution's text is indexed: PostgreSQL caps a tsvector at 1 MB,
# and the words that matter for finding knowledge come long before that.
MAX_DOCUMENT_CHARS = 200_000

_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> list[str]:
    """The normalized words of `text`, in order (duplicates kept)."""
    folded = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return [w[:MAX_WORD_LENGTH] for w in _WORD.findall(stripped)]


def _struct_strings(value: Any) -> Iterator[str]:
    """Every key and scalar value of a JSON-like value, as strings, depth first."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _struct_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _struct_strings(item)
    elif isinstance(value, bool):
        yield "true" if value else "false"
    elif isinstance(value, float) and value.is_integer():
        yield str(int(value))
    elif value is not None:
        yield str(value)


def document(contribution_type: str, tags: Sequence[str], content: dict[str, Any]) -> str:
    """The text indexed for a contribution: its type, tags, content keys and values."""
    parts: Iterable[str] = [contribution_type, *tags, *_struct_strings(content)]
    text = " ".join(w for part in parts for w in words(part))
    return text[:MAX_DOCUMENT_CHARS].rsplit(" ", 1)[0] if len(text) > MAX_DOCUMENT_CHARS else text


def query_words(query: str, *, field: str = "query") -> list[str]:
    """The distinct words of a search, or InvalidArgument when there are none or too many."""
    if len(query) > MAX_QUERY_LENGTH:
        raise InvalidArgument(field, f"must be at most {MAX_QUERY_LENGTH} characters")
    distinct = list(dict.fromkeys(words(query)))
    if not distinct:
        raise InvalidArgument(field, "must contain at least one word of letters or digits")
    if len(distinct) > MAX_QUERY_WORDS:
        raise InvalidArgument(field, f"must have at most {MAX_QUERY_WORDS} distinct words")
    return distinct
