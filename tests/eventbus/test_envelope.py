"""A batch's events are checked as each would be alone, and named by their index."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from grace.eventbus.v1 import event_pb2
from services.common.errors import InvalidArgument
from services.eventbus.envelope import EventValidator
from services.eventbus.model import BusSettings

LIMITS = BusSettings(max_data_bytes=1024)


def data_of(size: int) -> dict[str, str]:
    """A `data` that serializes to about `size` bytes."""
    return {"blob": "x" * size}


VALID: dict[str, object] = {"id": "ok-1", "event_type": "ml.a", "source_domain": "ai_domain"}
# Each field's values at its limit and just past it (or breaking its rule).
EDGES: dict[str, list[object]] = {
    "id": ["", "a" * 128, "a" * 129, "no spaces"],
    "event_type": ["ops.b", "t" * 256, "t" * 257, "", "bad type"],
    "source_domain": ["data_domain", "", "-leading", "s" * 129],
    "subject": ["s" * 256, "s" * 257],
    "traceparent": ["t" * 128, "t" * 129],
    "tracestate": ["x" * 512, "x" * 513],
    "signature_key_id": ["k" * 128, "k" * 129],
    "signature": [b"s" * 512, b"s" * 513],
    "signature_inclusion_path": [[b"h" * 32] * 32, [b"h" * 32] * 33, [b"h" * 31]],
    # `data` sizes: below the limit (in an event larger than the limit when another field
    # is long too), about at it, and above it.
    "data": [900, 1000, 1030],
}


@st.composite
def events(draw: st.DrawFn) -> event_pb2.Event:
    """A valid event with up to two fields at or past their limits."""
    fields = dict(VALID)
    for name in draw(st.lists(st.sampled_from(sorted(EDGES)), max_size=2)):
        fields[name] = draw(st.sampled_from(EDGES[name]))
    size = fields.pop("data", 0)
    event = event_pb2.Event(**fields)  # type: ignore[arg-type]
    if size:
        event.data.update(data_of(int(size)))  # type: ignore[call-overload]
    return event


@settings(max_examples=300, deadline=None)
@given(st.lists(events(), max_size=8))
def test_a_batch_check_finds_what_checking_each_event_alone_finds(
    batch: list[event_pb2.Event],
) -> None:
    alone: dict[int, str] = {}
    single = EventValidator(LIMITS)
    for index, event in enumerate(batch):
        try:
            single(event, f"events[{index}].")
        except InvalidArgument as exc:
            alone[index] = exc.message
    together = EventValidator(LIMITS)
    assert together.batch(batch) == alone
    # Again, now that the valid types and sources are remembered.
    assert together.batch(batch) == alone


def test_an_event_larger_than_the_data_limit_passes_while_its_data_is_within_it() -> None:
    validator = EventValidator(LIMITS)
    event = event_pb2.Event(event_type="ml.a", source_domain="ai", tracestate="x" * 500)
    event.data.update(data_of(900))
    assert event.ByteSize() > LIMITS.max_data_bytes >= event.data.ByteSize()
    assert validator.batch([event]) == {}
    event.data.update(data_of(1100))
    assert validator.batch([event, event_pb2.Event()]) == {
        0: f"events[0].data: is {event.data.ByteSize()} bytes; the limit is 1024",
        1: "events[1].event_type: is required",
    }
