"""The subscription index agrees with the pattern matcher and does not scan everything."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.patterns import matches
from services.eventbus.index import PatternIndex

pieces = st.text(alphabet="ab.:_-", min_size=0, max_size=6)
patterns = st.lists(pieces, min_size=1, max_size=4).map("*".join).filter(bool)
event_types = st.text(alphabet="ab.:_-", min_size=1, max_size=14)


@settings(max_examples=300)
@given(st.lists(st.lists(patterns, min_size=1, max_size=3), max_size=12), event_types)
def test_lookup_returns_exactly_the_subscribers_whose_patterns_match(
    subscriptions: list[list[str]], event_type: str
) -> None:
    index: PatternIndex[int] = PatternIndex()
    for key, pats in enumerate(subscriptions):
        index.add(key, pats)
    expected = {
        k for k, pats in enumerate(subscriptions) if any(matches(p, event_type) for p in pats)
    }
    assert index.lookup(event_type) == expected


@settings(max_examples=200)
@given(
    st.lists(st.lists(patterns, min_size=1, max_size=3), min_size=1, max_size=10),
    st.data(),
    st.lists(event_types, min_size=1, max_size=5),
)
def test_removing_subscribers_keeps_lookups_exact(
    subscriptions: list[list[str]], data: st.DataObject, types: list[str]
) -> None:
    index: PatternIndex[int] = PatternIndex()
    for key, pats in enumerate(subscriptions):
        index.add(key, pats)
    for event_type in types:  # fill the cache before removing
        index.lookup(event_type)
    removed = data.draw(st.sets(st.integers(0, len(subscriptions) - 1)))
    for key in removed:
        index.remove(key)
    for event_type in types:
        expected = {
            k
            for k, pats in enumerate(subscriptions)
            if k not in removed and any(matches(p, event_type) for p in pats)
        }
        assert index.lookup(event_type) == expected


def test_seed_patterns_route_as_the_seeds_describe() -> None:
    index: PatternIndex[str] = PatternIndex()
    index.add("memory_domain", ["ml.*"])
    index.add("monitoring_domain", ["ml.*", "error.critical"])
    index.add("everything", ["*"])
    index.add("failures", ["*.failed"])
    assert index.lookup("ml.prediction") == {"memory_domain", "monitoring_domain", "everything"}
    assert index.lookup("ml.model.trained") == {"memory_domain", "monitoring_domain", "everything"}
    assert index.lookup("error.critical") == {"monitoring_domain", "everything"}
    assert index.lookup("squad.task.failed") == {"failures", "everything"}
    assert index.lookup("ml") == {"everything"}


def test_a_lookup_tests_only_patterns_sharing_a_prefix_of_the_type(monkeypatch: object) -> None:
    import services.eventbus.index as index_module

    calls: list[str] = []

    def counting(pattern: str, event_type: str) -> bool:
        calls.append(pattern)
        return matches(pattern, event_type)

    monkeypatch.setattr(index_module, "matches", counting)  # type: ignore[attr-defined]
    index: PatternIndex[int] = PatternIndex()
    for n in range(10_000):
        index.add(n, [f"area{n}.*.done", f"area{n}.exact"])
    assert index.lookup("area42.job.done") == {42}
    # Only the one pattern filed under "area42." needed the full matcher.
    assert calls == ["area42.*.done"]
