"""Replies written from serialized elements are the bytes protobuf writes for them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grace.eventbus.v1 import event_pb2, eventbus_pb2
from services.common import wire
from services.common.wire import int_field, passthrough, repeated_message, varint


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_a_varint_is_what_protobuf_writes_for_the_number(value: int) -> None:
    written = eventbus_pb2.SubscribeResponse(head_sequence=value).SerializeToString()
    assert int_field(2, value) == written
    if value:
        assert written[1:] == varint(value)


@given(
    st.lists(st.integers(min_value=0, max_value=20_000), max_size=12),
    st.integers(min_value=0, max_value=2**40),
)
def test_a_response_written_from_its_events_bytes_is_the_one_protobuf_writes(
    id_lengths: list[int], head: int
) -> None:
    # Ids of these lengths put each event's size on both sides of the 1- and 2-byte lengths.
    events = [
        event_pb2.Event(id="x" * n, event_type="t.e", source_domain="d", sequence=i + 1)
        for i, n in enumerate(id_lengths)
    ]
    expected = eventbus_pb2.SubscribeResponse(events=events, head_sequence=head)
    written = repeated_message(1, [e.SerializeToString() for e in events]) + int_field(2, head)
    assert written == expected.SerializeToString()
    assert eventbus_pb2.SubscribeResponse.FromString(written) == expected


def test_the_passthrough_serializer_sends_bytes_as_they_are_and_serializes_messages() -> None:
    serialize = passthrough(eventbus_pb2.SubscribeResponse.SerializeToString)
    message = eventbus_pb2.SubscribeResponse(head_sequence=7)
    assert serialize(b"\x10\x07") == b"\x10\x07"
    assert serialize(message) == message.SerializeToString()


def test_a_response_is_right_past_the_number_of_lengths_kept_and_for_other_fields(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wire, "_headers", {})
    monkeypatch.setattr(wire, "_HEADERS_LIMIT", 3)
    # More distinct lengths than are kept, some of them twice, and 1- and 2-byte lengths.
    for lengths in ([1, 5, 1, 130, 7, 5, 300, 20_000], [5, 130, 2, 2]):
        events = [event_pb2.Event(id="x" * n) for n in lengths]
        encoded = [e.SerializeToString() for e in events]
        written = repeated_message(1, encoded)
        assert written == eventbus_pb2.SubscribeResponse(events=events).SerializeToString()
        assert len(wire._headers[1]) <= 3
        # Another field number writes its own tag with the same lengths.
        assert repeated_message(2, encoded) == b"".join(
            b"\x12" + varint(len(e)) + e for e in encoded
        )
