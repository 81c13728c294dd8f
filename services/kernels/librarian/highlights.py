"""Highlights: the fragments of a document around the words a search matched.

Computed from the stored text with the index's own tokenizer, so a highlighted word is
exactly a word the index matched, on either backend. A fragment is plain text; its spans
give the matched words' offsets within it (no markup to escape).
"""

from __future__ import annotations

from collections.abc import Collection

from services.common.fulltext import word_spans
from services.kernels.librarian.model import Highlight, Span

FRAGMENT_CHARS = 200
"""Longest fragment of the text; titles are highlighted whole up to this length."""

LEAD_CHARS = 40
"""Context kept before the first matched word of a text fragment."""

SCAN_CHARS = 200_000
"""How far into a text the highlighter looks (the index stops there too)."""


def highlight(field: str, value: str, terms: Collection[str]) -> Highlight | None:
    """The fragment of `value` around its first matched word, or None without a match.

    The fragment starts up to LEAD_CHARS before the first match (at a word boundary) and
    runs for at most FRAGMENT_CHARS characters.
    """
    first = None
    for s, _e, word in word_spans(value[:SCAN_CHARS]):
        if word in terms:
            first = s
            break
    if first is None:
        return None
    start = max(0, first - LEAD_CHARS)
    if start > 0:
        space = value.find(" ", start, first)
        start = space + 1 if space != -1 else start
    end = min(len(value), start + FRAGMENT_CHARS)
    if end < len(value):
        space = value.rfind(" ", start + 1, end)
        end = space if space > first else end
    spans = [Span(s, e) for s, e, word in word_spans(value[start:end]) if word in terms]
    return Highlight(field, value[start:end], tuple(spans))


def highlights(title: str, text: str, terms: Collection[str]) -> tuple[Highlight, ...]:
    """The title's and the text's highlights (those with a match)."""
    found = (highlight("title", title, terms), highlight("text", text, terms))
    return tuple(h for h in found if h is not None)
