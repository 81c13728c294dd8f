"""Deterministic text analysis shared by the example domains: statistics, keywords by
frequency without stop words, a summary sentence, and sentiment from a small lexicon."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

_WORD = re.compile(r"[A-Za-z][A-Za-z'_-]*[A-Za-z]|[A-Za-z]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _lexicon(text: str) -> frozenset[str]:
    return frozenset(text.split())


STOP_WORDS = _lexicon(
    """a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for
    from further had has have having he her here hers herself him himself his how i if in
    into is it its itself just me more most my myself no nor not now of off on once only or
    other our ours ourselves out over own same she should so some such than that the their
    theirs them themselves then there these they this those through to too under until up
    very was we were what when where which while who whom why will with would you your
    yours yourself yourselves also may might must shall us let get got one two"""
)
POSITIVE = _lexicon(
    """good great excellent fast faster efficient clean clear correct robust reliable simple
    success successful works working improve improved improvement better best secure safe
    stable elegant readable helpful happy love like positive win wins solved fixed"""
)
NEGATIVE = _lexicon(
    """bad poor slow slower broken bug bugs buggy error errors fail fails failed failure crash
    crashes leak leaks wrong unsafe insecure unstable messy complex confusing hard problem
    problems issue issues timeout timeouts negative hate worse worst vulnerable"""
)


def words(text: str) -> list[str]:
    """The lower-cased words of a text."""
    return [w.lower() for w in _WORD.findall(text)]


def sentences(text: str) -> list[str]:
    """The sentences of a text, stripped, empty ones dropped."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def statistics(text: str) -> dict[str, Any]:
    """Characters, words, unique words, sentences, paragraphs and mean word length."""
    tokens = words(text)
    return {
        "characters": len(text),
        "words": len(tokens),
        "unique_words": len(set(tokens)),
        "sentences": len(sentences(text)),
        "paragraphs": len([p for p in re.split(r"\n\s*\n", text) if p.strip()]),
        "average_word_length": round(sum(map(len, tokens)) / len(tokens), 2) if tokens else 0.0,
    }


def keywords(text: str, limit: int = 5) -> list[dict[str, Any]]:
    """The most frequent words that are not stop words (ties: first seen first)."""
    counts = Counter(w for w in words(text) if w not in STOP_WORDS and len(w) > 2)
    ranked = sorted(counts.items(), key=lambda item: -item[1])  # stable: first seen wins ties
    return [{"word": word, "count": count} for word, count in ranked[:limit]]


def summary(text: str) -> str:
    """The sentence that carries the most keyword weight (the first one on ties)."""
    found = sentences(text)
    if not found:
        return ""
    weights = Counter(w for w in words(text) if w not in STOP_WORDS and len(w) > 2)

    def weight(sentence: str) -> float:
        tokens = [w for w in words(sentence) if w in weights]
        return sum(weights[w] for w in tokens) / (len(words(sentence)) ** 0.5 or 1)

    return max(found, key=weight)


def sentiment(text: str) -> dict[str, Any]:
    """Lexicon sentiment: score = (positive - negative) / (positive + negative), in [-1, 1];
    label positive above 0.2, negative below -0.2, else neutral."""
    tokens = words(text)
    positive = sum(1 for w in tokens if w in POSITIVE)
    negative = sum(1 for w in tokens if w in NEGATIVE)
    total = positive + negative
    score = round((positive - negative) / total, 4) if total else 0.0
    label = "positive" if score > 0.2 else "negative" if score < -0.2 else "neutral"
    return {"label": label, "score": score, "positive": positive, "negative": negative}


def text_of(data: dict[str, Any]) -> str:
    """The text an action was given: `text`, `content`, `code`, `document` (a string or
    an object with `text`/`content`), or `value` (where the gateway puts a workflow step's
    `data` that is not an object), first one present."""
    for name in ("text", "content", "code", "document", "value"):
        value = data.get(name)
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, dict):
            inner = value.get("text") or value.get("content")
            if isinstance(inner, str) and inner.strip():
                return inner
    return ""


def text_of_results(results: list[Any]) -> str:
    """The text of a search step's results (their content's summary, text or content, one
    paragraph each), for an analysis of what an earlier step found."""
    paragraphs: list[str] = []
    for result in results:
        content = result.get("content") if isinstance(result, dict) else None
        if isinstance(content, dict):
            found = text_of(content) or str(content.get("summary") or "")
            if found:
                paragraphs.append(found)
        elif isinstance(content, str) and content.strip():
            paragraphs.append(content)
    return "\n\n".join(paragraphs)
