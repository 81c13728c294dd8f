"""The seeds' pattern semantics, by example and by property."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.errors import InvalidArgument
from services.common.patterns import literal_prefix, matches, validate_pattern

alphabet = st.text(alphabet="ab.c:_-", min_size=0, max_size=12)


@pytest.mark.parametrize(
    ("pattern", "event_type", "expected"),
    [
        ("ml.*", "ml.prediction", True),
        ("ml.*", "ml.model.trained", True),
        ("ml.*", "ml", False),
        ("ml.*", "mlx.prediction", False),
        ("*", "anything.at.all", True),
        ("*.failed", "squad.task.failed", True),
        ("a*b*c", "a.x.b.y.c", True),
        ("ml.prediction", "ml.prediction", True),
        ("ml.prediction", "ml.predictions", False),
        ("ml.?", "ml.x", False),
    ],
)
def test_seed_examples(pattern: str, event_type: str, expected: bool) -> None:
    assert matches(pattern, event_type) is expected


@given(alphabet)
def test_star_matches_everything_and_a_literal_matches_itself(event_type: str) -> None:
    assert matches("*", event_type)
    if event_type:
        assert matches(event_type, event_type)


@given(alphabet, alphabet, alphabet)
def test_a_prefix_star_suffix_pattern_matches_exactly_what_it_should(
    prefix: str, middle: str, suffix: str
) -> None:
    event_type = prefix + middle + suffix
    assert matches(f"{prefix}*{suffix}", event_type)
    assert matches(f"{prefix}*", event_type)


@given(st.lists(alphabet, min_size=1, max_size=4), alphabet)
def test_matching_agrees_with_an_independent_regex(parts: list[str], event_type: str) -> None:
    pattern = "*".join(parts)
    reference = re.fullmatch(".*".join(map(re.escape, parts)), event_type, re.DOTALL)
    assert matches(pattern, event_type) is (reference is not None)
    if matches(pattern, event_type):
        assert event_type.startswith(literal_prefix(pattern))


@pytest.mark.parametrize("pattern", ["", "x" * 257, "has space", "ml.[a]"])
def test_bad_patterns_are_rejected_with_the_field(pattern: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_pattern(pattern, field="patterns[0]")
    assert raised.value.field == "patterns[0]"
