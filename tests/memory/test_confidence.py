"""The confidence model and the tokenizer, without a database."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.errors import InvalidArgument
from services.memory.confidence import PRIOR_WEIGHT, Evidence, confidence
from services.memory.text import MAX_QUERY_WORDS, document, query_words, words

unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
count = st.integers(min_value=0, max_value=10_000)
evidence = st.builds(Evidence, count, count, count, count)


def test_without_evidence_confidence_is_the_initial_confidence() -> None:
    assert confidence(0.7, Evidence()) == pytest.approx(0.7)


def test_a_neutral_prior_gives_the_classic_reputation_score() -> None:
    # (r + 1) / (r + s + 2) with r = 3 confirmations and s = 1 refutation.
    assert confidence(0.5, Evidence(verifications=2, successes=1, failures=1)) == pytest.approx(
        4 / 6
    )


def test_formula_matches_the_documentation() -> None:
    ev = Evidence(verifications=3, disputes=1, successes=5, failures=2)
    expected = (PRIOR_WEIGHT * 0.9 + 8) / (PRIOR_WEIGHT + 11)
    assert confidence(0.9, ev) == pytest.approx(expected)


@given(unit, evidence)
def test_confidence_is_always_between_zero_and_one(initial: float, ev: Evidence) -> None:
    assert 0.0 <= confidence(initial, ev) <= 1.0


@given(unit, evidence, st.sampled_from(["verifications", "successes"]))
def test_positive_evidence_never_lowers_confidence(initial: float, ev: Evidence, kind: str) -> None:
    more = Evidence(**{**ev.__dict__, kind: getattr(ev, kind) + 1})
    assert confidence(initial, more) >= confidence(initial, ev)


@given(unit, evidence, st.sampled_from(["disputes", "failures"]))
def test_negative_evidence_never_raises_confidence(initial: float, ev: Evidence, kind: str) -> None:
    more = Evidence(**{**ev.__dict__, kind: getattr(ev, kind) + 1})
    assert confidence(initial, more) <= confidence(initial, ev)


@given(
    unit,
    st.integers(min_value=0, max_value=50),
    st.integers(min_value=1, max_value=50),
    st.integers(min_value=1, max_value=20),
)
def test_more_evidence_at_the_same_rate_narrows_toward_the_observed_rate(
    initial: float, good: int, total: int, factor: int
) -> None:
    good = min(good, total)
    rate = good / total

    def distance(scale: int) -> float:
        ev = Evidence(successes=good * scale, failures=(total - good) * scale)
        return abs(confidence(initial, ev) - rate)

    assert distance(factor + 1) <= distance(factor) + 1e-12
    assert distance(1000) < 0.01


def test_words_split_on_underscores_and_punctuation_and_ignore_case_and_accents() -> None:
    assert words("Port_Timeout, restart-component! Café 2x") == [
        "port",
        "timeout",
        "restart",
        "component",
        "cafe",
        "2x",
    ]


def test_document_holds_type_tags_and_content_keys_and_values() -> None:
    doc = document(
        "optimization",
        ["ops"],
        {"issue": "port_timeout", "nested": {"list": ["A", 2.0, True, None]}},
    )
    assert doc.split() == [
        "optimization",
        "ops",
        "issue",
        "port",
        "timeout",
        "nested",
        "list",
        "a",
        "2",
        "true",
    ]


@pytest.mark.parametrize("query", ["", "   ", "!!! ___", "x" * 1025])
def test_a_query_without_words_or_too_long_is_rejected(query: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        query_words(query)
    assert raised.value.field == "query"


def test_a_query_with_too_many_words_is_rejected() -> None:
    with pytest.raises(InvalidArgument):
        query_words(" ".join(f"w{i}" for i in range(MAX_QUERY_WORDS + 1)))


def test_query_words_are_distinct_and_normalized() -> None:
    assert query_words("Port timeout PORT") == ["port", "timeout"]
