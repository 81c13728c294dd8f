"""`gateway.protojson` prints exactly what `json_format.MessageToDict` prints.

The reference is `MessageToDict(preserving_proto_field_name=True,
always_print_fields_with_no_presence=True)`. Every message type a Grace RPC takes or returns
(and every type inside them) is printed empty and filled in three ways (every field set,
with unknown enum numbers and float extremes, with bool and integer map keys), and both
outputs must be equal as JSON text, key order included.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import descriptor as _descriptor
from google.protobuf import json_format, message_factory
from google.protobuf.message import Message

from gateway import protojson
from gateway.routes import discover_services

_Field = _descriptor.FieldDescriptor
MAX_DEPTH = 3


def message_types() -> list[_descriptor.Descriptor]:
    """Every message type the services take or return, and the types inside them."""
    seen: dict[str, _descriptor.Descriptor] = {}
    pending = [
        t
        for service in discover_services()
        for method in service.methods
        for t in (method.input_type, method.output_type)
    ]
    while pending:
        message_type = pending.pop()
        if message_type.full_name in seen:
            continue
        seen[message_type.full_name] = message_type
        pending.extend(f.message_type for f in message_type.fields if f.message_type)
    return [seen[name] for name in sorted(seen)]


def scalar(field: _descriptor.FieldDescriptor, variant: int, index: int = 0) -> Any:
    kind = field.cpp_type
    if kind == _Field.CPPTYPE_ENUM:
        assert field.enum_type is not None
        numbers = [v.number for v in field.enum_type.values]
        return 99 if variant == 1 and not field.enum_type.is_closed else numbers[-1 - index % 2]
    if field.type == _Field.TYPE_BYTES:
        return bytes([0, 255, index])
    if kind == _Field.CPPTYPE_STRING:
        return f"s{index}-é/ü"
    if kind == _Field.CPPTYPE_BOOL:
        return index % 2 == 0
    if kind in (_Field.CPPTYPE_INT64,):
        return -(2**60) - index
    if kind in (_Field.CPPTYPE_UINT64,):
        return 2**63 + index
    if kind in (_Field.CPPTYPE_INT32,):
        return -5 - index
    if kind in (_Field.CPPTYPE_UINT32,):
        return 7 + index
    if variant == 1:
        return [float("inf"), float("-inf"), float("nan")][index % 3]
    return 0.1 + index if kind == _Field.CPPTYPE_DOUBLE else 1.5 + index


def map_key(field: _descriptor.FieldDescriptor, variant: int, index: int) -> Any:
    if field.cpp_type == _Field.CPPTYPE_BOOL:
        return index % 2 == 0
    if field.cpp_type == _Field.CPPTYPE_STRING:
        return f"k{index}"
    return (-1 if variant == 2 else 1) * (index + 3)


def fill_known(message: Message, index: int) -> bool:
    """Fills a well-known type with a valid value; False when `message` is not one."""
    name = message.DESCRIPTOR.full_name
    if name == "google.protobuf.Timestamp":
        message.FromJsonString(f"2026-01-0{index + 1}T10:00:00.25Z")  # type: ignore[attr-defined]
    elif name == "google.protobuf.Duration":
        message.FromJsonString(f"{index + 1}.5s")  # type: ignore[attr-defined]
    elif name == "google.protobuf.Struct":
        message.update({"a": index, "b": [True, None, "x"], "c": {"d": 1.5}})  # type: ignore[attr-defined]
    elif name == "google.protobuf.Value":
        message.string_value = f"v{index}"  # type: ignore[attr-defined]
    elif name == "google.protobuf.ListValue":
        message.extend([1, "two"])  # type: ignore[attr-defined]
    elif name == "google.protobuf.FieldMask":
        message.paths.append("a_b.c")  # type: ignore[attr-defined]
    elif name == "google.protobuf.Any" or message.DESCRIPTOR.file.package == "google.protobuf":
        message.SetInParent()  # wrappers and Empty stay at their zero values
    else:
        return False
    return True


def fill(message: Message, variant: int, depth: int = 0) -> None:
    if fill_known(message, depth):
        return
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
            for index in range(2):
                key = map_key(key_field, variant, index)
                if value_field.message_type is not None:
                    if depth < MAX_DEPTH:
                        fill(value[key], variant, depth + 1)
                else:
                    value[key] = scalar(value_field, variant, index)
        elif field.is_repeated:
            for index in range(2):
                if entry is not None:
                    if depth < MAX_DEPTH:
                        fill(value.add(), variant, depth + 1)
                else:
                    value.append(scalar(field, variant, index))
        elif entry is not None:
            if depth < MAX_DEPTH:
                fill(value, variant, depth + 1)
            else:
                value.SetInParent()
        elif field.containing_oneof is None or variant != 2:
            setattr(message, field.name, scalar(field, variant))


def reference(message: Message) -> Any:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def cases() -> Iterator[Any]:
    for message_type in message_types():
        yield pytest.param(message_type, id=message_type.full_name)


@pytest.mark.parametrize("message_type", list(cases()))
def test_every_grace_message_prints_as_message_to_dict_prints_it(
    message_type: _descriptor.Descriptor,
) -> None:
    cls = message_factory.GetMessageClass(message_type)
    messages = [cls()]
    for variant in range(3):
        message = cls()
        fill(message, variant)
        messages.append(message)
    for message in messages:
        ours = json.dumps(protojson.to_json_dict(message))
        assert ours == json.dumps(reference(message)), message_type.full_name


def test_the_message_types_cover_maps_enums_and_well_known_types() -> None:
    """The comparison above is only as good as its messages: they exercise every kind."""
    fields = [f for t in message_types() for f in t.fields]
    assert any(f.message_type and f.message_type.GetOptions().map_entry for f in fields)
    assert any(f.cpp_type == _Field.CPPTYPE_ENUM for f in fields)
    assert any(f.type == _Field.TYPE_BYTES for f in fields)
    assert any(f.cpp_type in (_Field.CPPTYPE_INT64, _Field.CPPTYPE_UINT64) for f in fields)
    names = {f.message_type.full_name for f in fields if f.message_type}
    assert {"google.protobuf.Timestamp", "google.protobuf.Struct"} <= names


@pytest.mark.parametrize(
    "text",
    [
        "1970-01-01T00:00:00Z",
        "2026-01-01T10:00:00.250Z",
        "2026-01-01T10:00:00.000250Z",
        "2026-01-01T10:00:00.000000250Z",
        "1969-12-31T23:59:59.999999999Z",
    ],
)
def test_timestamps_print_at_every_precision_as_message_to_dict_prints_them(text: str) -> None:
    from google.protobuf import timestamp_pb2

    stamp = timestamp_pb2.Timestamp()
    stamp.FromJsonString(text)
    assert protojson.to_json_dict(stamp) == reference(stamp)


@pytest.mark.parametrize("text", ["0s", "1.5s", "-3.100s", "0.000001s", "-0.000000001s"])
def test_durations_print_with_sign_and_precision_as_message_to_dict_prints_them(
    text: str,
) -> None:
    from google.protobuf import duration_pb2

    duration = duration_pb2.Duration()
    duration.FromJsonString(text)
    assert protojson.to_json_dict(duration) == reference(duration)


def test_remembered_timestamp_texts_stay_bounded_and_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from google.protobuf import timestamp_pb2

    monkeypatch.setattr(protojson, "MAX_REMEMBERED_TIMESTAMPS", 8)
    monkeypatch.setattr(protojson, "_timestamp_texts", {})
    for second in range(50):
        for nanos in (0, 250_000_000, 250_000, 250):
            stamp = timestamp_pb2.Timestamp(seconds=1_700_000_000 + second, nanos=nanos)
            assert protojson.to_json_dict(stamp) == reference(stamp)
            assert protojson.to_json_dict(stamp) == reference(stamp)  # now remembered
            assert len(protojson._timestamp_texts) <= 8


def test_an_invalid_timestamp_raises_as_the_reference_does_and_is_not_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from google.protobuf import timestamp_pb2

    monkeypatch.setattr(protojson, "_timestamp_texts", {})
    stamp = timestamp_pb2.Timestamp(seconds=0, nanos=-1)
    with pytest.raises(ValueError, match="Nanos"):
        reference(stamp)
    with pytest.raises(ValueError, match="Nanos"):
        protojson.to_json_dict(stamp)
    assert protojson._timestamp_texts == {}
