"""Pages bounded by count and by bytes: every item comes back exactly once, in order, and
no page passes its budget unless one item alone does."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from grace.eventbus.v1 import event_pb2, eventbus_pb2
from services.common.pagination import byte_batches, encoded_size, take_page

sizes = st.lists(st.integers(min_value=0, max_value=400), max_size=40)


def paginate(items: list[int], limit: int, budget: int) -> list[list[int]]:
    pages = []
    rest = items
    while True:
        page, more = take_page(rest, limit, lambda size: size, max_bytes=budget)
        pages.append(page)
        rest = rest[len(page) :]
        if not more:
            return pages


@given(sizes, st.integers(min_value=1, max_value=10), st.integers(min_value=1, max_value=1000))
def test_pages_cover_every_item_once_within_count_and_budget(
    items: list[int], limit: int, budget: int
) -> None:
    pages = paginate(items, limit, budget)
    assert [item for page in pages for item in page] == items
    for page in pages:
        assert len(page) <= limit
        assert page or not items  # never an empty page while items remain
    for page in pages:
        assert len(page) == 1 or sum(page) <= budget


def test_a_page_ends_early_at_the_budget_and_says_more_remain() -> None:
    assert take_page([400, 400, 400], 10, lambda s: s, max_bytes=1000) == ([400, 400], True)
    assert take_page([400, 400], 10, lambda s: s, max_bytes=1000) == ([400, 400], False)
    assert take_page([1, 1, 1], 2, lambda s: s) == ([1, 1], True)


def test_an_item_larger_than_the_budget_still_comes_alone() -> None:
    assert take_page([5000, 1], 10, lambda s: s, max_bytes=1000) == ([5000], True)


@given(st.lists(st.integers(min_value=0, max_value=300), max_size=30), st.integers(10, 2000))
def test_byte_batches_keep_order_and_stay_within_the_budget(
    lengths: list[int], budget: int
) -> None:
    events = [event_pb2.Event(event_type="t", id="x" * n) for n in lengths]
    batches = [
        events[cut]
        for cut in byte_batches([e.SerializeToString() for e in events], max_bytes=budget)
    ]
    assert [e for batch in batches for e in batch] == events
    for batch in batches:
        assert batch
        assert len(batch) == 1 or sum(encoded_size(e) for e in batch) <= budget


def test_the_encoded_size_counts_what_a_repeated_field_adds() -> None:
    events = [event_pb2.Event(event_type="t", id="x" * n) for n in (0, 10, 200, 20_000)]
    response = eventbus_pb2.SubscribeResponse(events=events)
    assert response.ByteSize() <= sum(encoded_size(e) for e in events)


def greedy_cuts(sizes: list[int], budget: int) -> list[list[int]]:
    """The cuts of one pass that starts a new batch where the next message would not fit."""
    batches: list[list[int]] = []
    used = 0
    for index, size in enumerate(sizes):
        if batches and used + size <= budget:
            batches[-1].append(index)
            used += size
        else:
            batches.append([index])
            used = size
    return batches


@given(st.lists(st.integers(min_value=0, max_value=300), max_size=30), st.integers(10, 12_000))
def test_byte_batches_cut_where_one_pass_over_the_encoded_sizes_cuts(
    lengths: list[int], budget: int
) -> None:
    # Budgets up to above the whole batch's size: batches that fit whole come as one.
    encoded = [event_pb2.Event(event_type="t", id="x" * n).SerializeToString() for n in lengths]
    sizes = [encoded_size(event_pb2.Event.FromString(e)) for e in encoded]
    cuts = [list(range(len(encoded)))[cut] for cut in byte_batches(encoded, max_bytes=budget)]
    assert cuts == greedy_cuts(sizes, budget)
