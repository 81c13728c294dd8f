"""The quorum rule of the health federation, as properties of `SuspicionBook`."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import InvalidArgument
from services.common.observers import observers_of, quorum, targets_of
from services.registry.suspicions import (
    Report,
    SuspicionBook,
    SuspicionState,
    TransitionKind,
)

OBSERVER_IDS = [f"observer_{i}" for i in range(8)]

reports = st.lists(
    st.tuples(st.sampled_from(OBSERVER_IDS), st.integers(0, 3), st.booleans()),
    max_size=40,
)


@settings(max_examples=300)
@given(reports=reports, needed=st.integers(1, 6))
def test_a_suspect_is_never_confirmed_by_fewer_distinct_observers_than_the_quorum(
    reports: list[tuple[str, int, bool]], needed: int
) -> None:
    book = SuspicionBook()
    for observer, incarnation, confirmed in reports:
        suspicion, transitions = book.report(
            Report(observer, "suspect", incarnation, confirmed), OBSERVER_IDS, needed, 0.0
        )
        for transition in transitions:
            if transition.kind is TransitionKind.DOWN_CONFIRMED:
                assert len(transition.suspicion.confirming) >= needed
        if suspicion is not None and suspicion.state is SuspicionState.CONFIRMED_DOWN:
            assert len(suspicion.confirming) >= needed


@settings(max_examples=300)
@given(reports=reports, needed=st.integers(1, 6))
def test_the_suspect_is_confirmed_once_the_quorum_of_one_incarnation_confirms(
    reports: list[tuple[str, int, bool]], needed: int
) -> None:
    book = SuspicionBook()
    confirmed_by: dict[int, set[str]] = {}
    for observer, _, confirmed in reports:
        book.report(Report(observer, "suspect", 0, confirmed), OBSERVER_IDS, needed, 0.0)
        if confirmed:
            confirmed_by.setdefault(0, set()).add(observer)
    expected = len(confirmed_by.get(0, set())) >= needed
    suspicion = book.get("suspect")
    assert (suspicion is not None and suspicion.state is SuspicionState.CONFIRMED_DOWN) == expected


@settings(max_examples=300)
@given(reports=reports, needed=st.integers(1, 4), bump=st.integers(1, 5))
def test_a_refutation_with_a_higher_incarnation_clears_the_suspicion(
    reports: list[tuple[str, int, bool]], needed: int, bump: int
) -> None:
    book = SuspicionBook()
    for observer, incarnation, confirmed in reports:
        book.report(Report(observer, "suspect", incarnation, confirmed), OBSERVER_IDS, needed, 0.0)
    before = book.get("suspect")
    known, transitions = book.refute("suspect", (before.incarnation if before else 0) + bump)
    assert book.get("suspect") is None
    if before is not None:
        expected = (
            TransitionKind.RECOVERED
            if before.state is SuspicionState.CONFIRMED_DOWN
            else TransitionKind.REFUTED
        )
        assert [t.kind for t in transitions] == [expected]
    # Reports about the refuted incarnation are stale from now on.
    stale, changes = book.report(
        Report("observer_0", "suspect", known - 1, True), OBSERVER_IDS, 1, 0.0
    )
    assert stale is None
    assert changes == []


def test_a_refutation_that_does_not_outbid_the_suspicion_clears_nothing() -> None:
    book = SuspicionBook()
    book.report(Report("a", "suspect", 7, False), OBSERVER_IDS, 2, 0.0)
    _, transitions = book.refute("suspect", 7)
    assert transitions == []
    assert book.get("suspect") is not None


def test_the_first_report_announces_the_suspicion_once() -> None:
    book = SuspicionBook()
    _, first = book.report(Report("a", "suspect", 1, False), OBSERVER_IDS, 2, 0.0)
    _, second = book.report(Report("b", "suspect", 1, False), OBSERVER_IDS, 2, 0.0)
    assert [t.kind for t in first] == [TransitionKind.SUSPECTED]
    assert second == []


def test_an_observer_cannot_report_itself() -> None:
    with pytest.raises(InvalidArgument, match="observer_id"):
        SuspicionBook().report(Report("a", "a", 0, False), OBSERVER_IDS, 2, 0.0)


@given(n=st.integers(1, 60), k=st.integers(1, 6))
def test_every_member_has_as_many_observers_as_targets_in_the_ring(n: int, k: int) -> None:
    members = [f"m{i}" for i in range(n)]
    expected = min(k, n - 1)
    for member in members:
        assert len(targets_of(member, members, k)) == expected
        watchers = observers_of(member, members, k)
        assert len(watchers) == expected
        assert member not in watchers
        assert all(member in targets_of(w, members, k) for w in watchers)


@given(observers=st.integers(0, 20), minimum=st.integers(1, 4))
def test_the_default_quorum_is_a_majority_and_at_least_the_minimum(
    observers: int, minimum: int
) -> None:
    needed = quorum(observers, minimum=minimum)
    assert needed >= minimum
    assert needed > observers / 2
