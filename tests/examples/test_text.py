"""The example domains' text analysis: deterministic keywords, summary and sentiment."""

from __future__ import annotations

from examples.text import keywords, sentiment, statistics, summary, text_of

REVIEW = (
    "The parser is slow and buggy. The parser fails on large files, which is a problem. "
    "A faster parser would be great."
)


def test_keywords_rank_by_frequency_without_stop_words() -> None:
    found = keywords(REVIEW, limit=3)
    assert found == [
        {"word": "parser", "count": 3},
        {"word": "slow", "count": 1},
        {"word": "buggy", "count": 1},
    ]


def test_the_summary_is_the_sentence_with_most_keyword_weight() -> None:
    assert summary(REVIEW) == "The parser fails on large files, which is a problem."
    assert summary("") == ""


def test_sentiment_counts_lexicon_words() -> None:
    assert sentiment(REVIEW) == {
        "label": "negative",
        "score": -0.3333,
        "positive": 2,
        "negative": 4,
    }
    assert sentiment("Clean, fast and reliable.")["label"] == "positive"
    assert sentiment("The sky is blue.")["label"] == "neutral"


def test_statistics_describe_the_text() -> None:
    stats = statistics("One two three.\n\nFour five!")
    assert stats == {
        "characters": 26,
        "words": 5,
        "unique_words": 5,
        "sentences": 2,
        "paragraphs": 2,
        "average_word_length": 3.8,
    }


def test_the_text_is_found_under_any_of_its_usual_names() -> None:
    assert text_of({"text": "a"}) == "a"
    assert text_of({"document": {"title": "t", "text": "b"}}) == "b"
    assert text_of({"document": "c", "results": []}) == "c"
    assert text_of({"code": "def f(): pass"}) == "def f(): pass"
    assert text_of({"other": "x"}) == ""
