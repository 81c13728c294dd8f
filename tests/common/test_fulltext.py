"""The shared full-text pieces: one tokenizer (with its ASCII fast path), word offsets for
highlights, and a BM25 relevance that is the same in Python and in SQL."""

from __future__ import annotations

import math
import sqlite3
import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from services.common.fulltext import (
    MAX_WORD_LENGTH,
    Corpus,
    idf,
    indexed_text,
    ranking_params,
    relevance,
    relevance_sql,
    word_spans,
    words,
)


def reference_words(value: str) -> list[str]:
    """The tokenizer's definition, without shortcuts."""
    folded = unicodedata.normalize("NFKD", value.casefold())
    stripped = "".join(ch for ch in folded if not unicodedata.combining(ch))
    tokens: list[str] = []
    current = ""
    for ch in stripped:
        if ch.isalnum() or (ch != "_" and unicodedata.category(ch)[0] in "LN"):
            current += ch
        elif current:
            tokens.append(current[:MAX_WORD_LENGTH])
            current = ""
    if current:
        tokens.append(current[:MAX_WORD_LENGTH])
    return tokens


ascii_text = st.text(alphabet=st.characters(max_codepoint=127), max_size=300)


@given(ascii_text)
def test_the_ascii_fast_path_splits_exactly_like_the_general_tokenizer(value: str) -> None:
    assert words(value) == reference_words(value)


@given(st.text(max_size=200))
def test_word_spans_point_at_the_words_the_index_stores(value: str) -> None:
    spans = list(word_spans(value))
    assert [w for _, _, w in spans] == words(value)
    for start, end, word in spans:
        # One span is one run of letters and digits; compatibility forms such as '¼'
        # may fold into several words, each pointing at the whole run.
        assert word in words(value[start:end])


def test_long_words_are_cut_and_accents_folded() -> None:
    assert words("x" * 100 + " Été_Déjà") == ["x" * MAX_WORD_LENGTH, "ete", "deja"]
    assert indexed_text("Port-timeout!", "  ", "retry") == "port timeout retry"


@given(
    weight=st.floats(min_value=0.01, max_value=50),
    length=st.integers(min_value=0, max_value=10_000),
    documents=st.integers(min_value=1, max_value=1_000_000),
    words_total=st.integers(min_value=0, max_value=10_000_000),
    boost=st.sampled_from([1.0, 2.0]),
)
def test_relevance_in_python_equals_relevance_in_sql(
    weight: float, length: int, documents: int, words_total: int, boost: float
) -> None:
    corpus = Corpus(documents, words_total)
    sql = f"SELECT {relevance_sql(':words', str(boost))}".replace("CAST(", "CAST(").replace(
        "DOUBLE PRECISION", "REAL"
    )
    with sqlite3.connect(":memory:") as conn:
        (value,) = conn.execute(sql, {**ranking_params(weight, corpus), "words": length}).fetchone()
    assert math.isclose(value, relevance(weight, length, corpus, boost), rel_tol=1e-12)
    assert 0 < value < 1


def test_rarer_words_weigh_more() -> None:
    assert idf(1000, 1) > idf(1000, 10) > idf(1000, 999) > 0
