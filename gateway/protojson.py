"""Messages to their JSON form, with each message type's conversions worked out once.

`to_json_dict(message)` returns exactly what `json_format.MessageToDict(message,
preserving_proto_field_name=True, always_print_fields_with_no_presence=True)` returns, keys
in the same order, but `json_format` looks up every field's descriptor, type, map-ness and
enum names again for every message it prints: on a gateway GET that was the largest part of
the gateway's own work. Here a message type's fields are resolved the first time it is
printed (one converter per field, its no-presence defaults computed) and reused after.

Only the common cases are converted here: strings, booleans, integers, enums (names looked
up once), nested messages, repeated fields and maps; Timestamp, Duration and FieldMask by
their own `ToJsonString()`, the very call `json_format` makes for them (a timestamp's text
is remembered for the next message with the same one). Everything else with subtle rules
(bytes, floats, the other well-known types such as Struct, wrappers, extensions, unknown
enum numbers) is handed to `json_format`'s own printer, so it stays the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from google.protobuf import descriptor as _descriptor
from google.protobuf import json_format
from google.protobuf.message import Message

Converter = Callable[[Any], Any]

# The reference printer, with the options of `to_json_dict`: `MessageToDict` is this class
# and these two methods (private API; the protobuf version is pinned by the lock file, and
# tests/gateway/test_protojson.py compares both on every Grace message).
_PRINTER: Any = json_format._Printer(  # type: ignore[attr-defined]  # private, see above
    preserving_proto_field_name=True, always_print_fields_with_no_presence=True
)
_Field = _descriptor.FieldDescriptor
_INT32_TYPES = frozenset({_Field.CPPTYPE_INT32, _Field.CPPTYPE_UINT32})
_INT64_TYPES = frozenset({_Field.CPPTYPE_INT64, _Field.CPPTYPE_UINT64})

# The well-known types whose JSON form is their `ToJsonString()`: `json_format` prints them
# with exactly that call (its `_GenericMessageToJsonObject`).
_STRING_FORM_TYPES = frozenset(
    {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}
)

# Timestamp text by (seconds, nanos). A record's timestamps repeat from one read to the next
# and each text costs a datetime, a timedelta and isoformat; the text is a function of the
# key alone, so there is nothing to invalidate, and the table is emptied when full.
MAX_REMEMBERED_TIMESTAMPS = 4096
_timestamp_texts: dict[tuple[int, int], str] = {}

# One converter per message type, by full name. Bounded: the types are those compiled into
# the process.
_by_type: dict[str, Converter] = {}


def to_json_dict(message: Message) -> Any:
    """The JSON form of a message: proto field names, zero values included (see the module
    docstring)."""
    message_type: Any = message.DESCRIPTOR  # the upb and pure-Python descriptor types
    return _message_converter(message_type)(message)


def _message_converter(message_type: _descriptor.Descriptor) -> Converter:
    known = _by_type.get(message_type.full_name)
    if known is not None:
        return known
    if message_type.full_name == "google.protobuf.Timestamp":
        _by_type[message_type.full_name] = _timestamp_text
        return _timestamp_text
    if message_type.full_name in _STRING_FORM_TYPES:
        # What the reference printer ends up calling for these, without its dispatch (a
        # registry record has five timestamps and a duration).
        _by_type[message_type.full_name] = _to_json_string
        return _to_json_string
    if message_type.file.package == "google.protobuf":
        # The well-known types (Timestamp, Struct, wrappers...) have JSON forms of their own.
        reference: Converter = _PRINTER._MessageToJsonObject
        _by_type[message_type.full_name] = reference
        return reference
    fields: dict[int, tuple[str, Converter]] = {}
    defaults: list[tuple[str, Callable[[], Any]]] = []

    def convert(message: Message) -> Any:
        js: dict[str, Any] = {}
        for field, value in message.ListFields():
            known = None if field.is_extension else fields.get(field.number)
            if known is None:
                return _PRINTER._MessageToJsonObject(message)
            js[known[0]] = known[1](value)
        for name, default in defaults:
            if name not in js:
                js[name] = default()
        return js

    # Registered before its fields are resolved: a message type may contain itself.
    _by_type[message_type.full_name] = convert
    for field in message_type.fields:
        fields[field.number] = (field.name, _field_converter(field))
    for field in message_type.fields:
        if field.has_presence:
            continue
        if _is_map(field):
            defaults.append((field.name, dict))
        elif field.is_repeated:
            defaults.append((field.name, list))
        else:
            zero = _PRINTER._FieldToJsonObject(field, field.default_value)
            defaults.append((field.name, partial(_same, zero)))
    return convert


def _to_json_string(message: Any) -> str:
    text: str = message.ToJsonString()
    return text


def _timestamp_text(message: Any) -> str:
    key = (message.seconds, message.nanos)
    text = _timestamp_texts.get(key)
    if text is None:
        text = message.ToJsonString()  # raises for an invalid timestamp: nothing remembered
        if len(_timestamp_texts) >= MAX_REMEMBERED_TIMESTAMPS:
            _timestamp_texts.clear()
        _timestamp_texts[key] = text
    return text


def _same(value: Any) -> Any:
    return value


def _field_converter(field: _descriptor.FieldDescriptor) -> Converter:
    if _is_map(field):
        assert field.message_type is not None
        to_value = _value_converter(field.message_type.fields_by_name["value"])

        def convert_map(entries: Any) -> dict[str, Any]:
            return {_map_key(key): to_value(entries[key]) for key in entries}

        return convert_map
    to_json = _value_converter(field)
    if field.is_repeated:

        def convert_repeated(values: Any) -> list[Any]:
            return [to_json(value) for value in values]

        return convert_repeated
    return to_json


def _is_map(field: _descriptor.FieldDescriptor) -> bool:
    entry = field.message_type
    return entry is not None and entry.GetOptions().map_entry


def _map_key(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


def _value_converter(field: _descriptor.FieldDescriptor) -> Converter:
    kind = field.cpp_type
    if kind == _Field.CPPTYPE_MESSAGE:
        assert field.message_type is not None
        return _message_converter(field.message_type)
    if kind == _Field.CPPTYPE_ENUM:
        assert field.enum_type is not None
        reference = partial(_PRINTER._FieldToJsonObject, field)
        names = {value.number: reference(value.number) for value in field.enum_type.values}

        def convert_enum(number: int) -> Any:
            return names[number] if number in names else reference(number)

        return convert_enum
    if kind == _Field.CPPTYPE_STRING and field.type != _Field.TYPE_BYTES:
        return str
    if kind == _Field.CPPTYPE_BOOL:
        return bool
    if kind in _INT64_TYPES:
        return str
    if kind in _INT32_TYPES:
        return _same
    return partial(_PRINTER._FieldToJsonObject, field)
