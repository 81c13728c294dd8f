"""HTTP request -> protobuf request, protobuf response -> JSON, following one HttpRule.

Request fields are filled in this order, later sources winning: the body (the whole request
for `body: "*"`, one field for a named body), then the query string (every field the path
and body do not bind: dotted names for nested fields, repeated parameters for repeated
fields, enums by name or number, Timestamp/Duration/FieldMask in their JSON string form,
Struct/Value/ListValue as JSON text), then the path variables. JSON accepts both the proto
and the camelCase names and rejects unknown fields. Output uses the proto field names with
every zero value present.

JSON is held to what every consumer of the message can take: at most `MAX_JSON_DEPTH`
levels of nesting, finite numbers only (no `NaN`, `Infinity` or overflowing literals), and
bytes fields in strict base64 (standard or URL-safe alphabet, padding optional). Each is a
`TranscodeError` naming the field, so a 400, never a crash or a silently mangled value.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import descriptor as _descriptor
from google.protobuf import json_format
from google.protobuf.message import Message

from gateway import protojson
from gateway.routes import Route

_FD = _descriptor.FieldDescriptor
_JSON_TEXT_TYPES = {
    "google.protobuf.Struct",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
}
_STRING_FORM_TYPES = {
    "google.protobuf.Timestamp",
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
}
# A google.protobuf.Struct costs three protobuf nesting levels per JSON level (Struct, its map
# entry, Value), and protobuf decoders refuse messages nested deeper than 100: 32 JSON levels
# keeps every request decodable by the upstream, with room for the enclosing messages.
MAX_JSON_DEPTH = 32
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_BRACKET = re.compile(rb"[\[\]{}]")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}|[A-Za-z0-9_-]*={0,2}")
# Numbers from the query string in ASCII digits only: str.isdigit() also holds for "¹",
# which int() refuses, and int() and float() (json_format's too) read "٣" as 3.
_ENUM_NUMBER = re.compile(r"-?[0-9]{1,10}")
_INTEGER = re.compile(r"-?[0-9]{1,20}")
_INTEGER_TYPES = {
    _FD.TYPE_INT32,
    _FD.TYPE_INT64,
    _FD.TYPE_UINT32,
    _FD.TYPE_UINT64,
    _FD.TYPE_SINT32,
    _FD.TYPE_SINT64,
    _FD.TYPE_FIXED32,
    _FD.TYPE_FIXED64,
    _FD.TYPE_SFIXED32,
    _FD.TYPE_SFIXED64,
}
_WRAPPER_PREFIX = "google.protobuf."
_WRAPPERS = {
    "DoubleValue",
    "FloatValue",
    "Int64Value",
    "UInt64Value",
    "Int32Value",
    "UInt32Value",
    "BoolValue",
    "StringValue",
    "BytesValue",
}


class TranscodeError(ValueError):
    """The HTTP request cannot become the gRPC request; the message names the field.

    Attributes:
        field: The offending field (dotted), or "" for the body as a whole.
        description: What is wrong with it.
    """

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}" if field else description)
        self.field = field
        self.description = description


def _field(message: _descriptor.Descriptor, name: str) -> _FD | None:
    found = message.fields_by_name.get(name)
    if found is not None:
        return found
    for candidate in message.fields:
        if candidate.json_name == name:
            return candidate
    return None


def resolve_field_path(message: _descriptor.Descriptor, dotted: str) -> list[_FD] | None:
    """The fields along a dotted path (proto or camelCase names), or None if one is missing."""
    chain: list[_FD] = []
    current: _descriptor.Descriptor | None = message
    for name in dotted.split("."):
        if current is None:
            return None
        found = _field(current, name)
        if found is None:
            return None
        chain.append(found)
        current = found.message_type if not _is_map(found) else None
    return chain


def _is_map(field: _FD) -> bool:
    return (
        field.is_repeated
        and field.message_type is not None
        and field.message_type.GetOptions().map_entry
    )


def _is_repeated(field: _FD) -> bool:
    return field.is_repeated


def _scalar_json(field: _FD, text: str, dotted: str) -> Any:
    """Converts one query/path string to the JSON value json_format expects for `field`."""
    if field.message_type is not None:
        full_name = field.message_type.full_name
        if full_name in _JSON_TEXT_TYPES:
            try:
                return loads(text, dotted)
            except TranscodeError:
                if full_name == "google.protobuf.Value" and json_depth(text.encode()) == 0:
                    return text  # a bare word is a string Value
                raise
        if full_name in _STRING_FORM_TYPES:
            return text
        if full_name.startswith(_WRAPPER_PREFIX) and full_name[16:] in _WRAPPERS:
            return _scalar_json(field.message_type.fields_by_name["value"], text, dotted)
        raise TranscodeError(
            dotted, "a message cannot come from the query string; set its fields with dotted names"
        )
    if field.type == _FD.TYPE_BOOL:
        lowered = text.lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise TranscodeError(dotted, f"expected true or false, got {text!r}")
    if field.type in (_FD.TYPE_DOUBLE, _FD.TYPE_FLOAT):
        try:
            if not text.isascii():
                raise ValueError(text)
            return _finite_float(text)
        except ValueError:
            raise TranscodeError(dotted, f"expected a finite number, got {text!r}") from None
    if field.type in _INTEGER_TYPES and not _INTEGER.fullmatch(text):
        raise TranscodeError(dotted, f"expected an integer in ASCII digits, got {text!r}")
    if field.type == _FD.TYPE_ENUM and field.enum_type is not None:
        if _ENUM_NUMBER.fullmatch(text):
            return int(text)
        if text not in field.enum_type.values_by_name:
            names = ", ".join(v.name for v in field.enum_type.values)
            raise TranscodeError(dotted, f"expected one of {names} or its number, got {text!r}")
        return text
    if field.type == _FD.TYPE_BYTES and not _is_base64(text):
        raise TranscodeError(dotted, "expected base64 (standard or URL-safe alphabet)")
    return text


def _assign(message: Message, chain: list[_FD], value: Any, dotted: str) -> None:
    """Sets the field at the end of `chain` from its JSON value, creating parents."""
    target = message
    for parent in chain[:-1]:
        if _is_repeated(parent):
            raise TranscodeError(dotted, f"{parent.name} is repeated and cannot be addressed")
        target = getattr(target, parent.name)
    leaf = chain[-1]
    try:
        json_format.ParseDict({leaf.name: value}, target)
    except (json_format.ParseError, OverflowError) as exc:
        raise TranscodeError(dotted, str(exc)) from None


def _set_text(message: Message, field: _FD, text: str, dotted: str) -> None:
    try:
        setattr(message, field.name, text)
    except (TypeError, ValueError) as exc:
        raise TranscodeError(dotted, str(exc)) from None


def _bound_prefixes(route: Route, path_fields: Iterable[str]) -> list[str]:
    bound = list(path_fields)
    if route.body and route.body != "*":
        bound.append(route.body)
    return bound


def build_request(
    route: Route,
    bindings: Mapping[str, str],
    query: Iterable[tuple[str, str]],
    body: bytes,
) -> Message:
    """Builds the gRPC request of a matched route.

    Args:
        route: The matched route.
        bindings: Path variables by field path (from the template match).
        query: Query parameters in order, repeated names repeated.
        body: The raw request body; empty means `{}`.

    Raises:
        TranscodeError: Malformed JSON, wrong types, unknown fields, empty path variables.
    """
    request: Message = route.request_class()
    descriptor = route.method.input_type
    if route.body:
        document = _parse_body(body)
        if route.body == "*":
            if not isinstance(document, dict):
                raise TranscodeError("", "the request body must be a JSON object")
            check_bytes_fields(document, descriptor)
            try:
                json_format.ParseDict(document, request)
            except (json_format.ParseError, OverflowError) as exc:
                raise TranscodeError("", f"invalid request body: {exc}") from None
        else:
            chain = resolve_field_path(descriptor, route.body)
            assert chain is not None  # checked when the table was built
            if chain[-1].message_type is not None:
                check_bytes_fields(document, chain[-1].message_type, route.body)
            else:
                _check_bytes_value(chain[-1], document, route.body)
            _assign(request, chain, document, route.body)
    elif body.strip() not in (b"", b"{}"):
        raise TranscodeError("", "this route takes no request body")

    if route.body != "*":
        _apply_query(route, request, descriptor, bindings.keys(), query)
    elif any(True for _ in query):
        raise TranscodeError("", "this route takes every field from the body, not the query")

    for field_path, value in bindings.items():
        if value == "":
            raise TranscodeError(field_path, "the path variable is empty")
        chain = resolve_field_path(descriptor, field_path)
        assert chain is not None  # checked when the table was built
        if _is_repeated(chain[-1]):
            _assign(request, chain, [_scalar_json(chain[-1], value, field_path)], field_path)
        elif len(chain) == 1 and chain[0].type == _FD.TYPE_STRING:
            # The common case (an id in the path): the text is the value, as ParseDict would
            # set it, without a JSON round trip per request.
            _set_text(request, chain[0], value, field_path)
        else:
            _assign(request, chain, _scalar_json(chain[-1], value, field_path), field_path)
    return request


def _parse_body(body: bytes) -> Any:
    if not body.strip():
        return {}
    return loads(body, "")


def json_depth(text: bytes) -> int:
    """How deeply the arrays and objects of a JSON text nest (brackets inside strings do not
    count). Linear, without recursion, so any input is safe to measure."""
    depth = deepest = 0
    for match in _JSON_BRACKET.finditer(_JSON_STRING.sub(b'""', text)):
        if match.group() in (b"{", b"["):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number; numbers must be finite")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range for a number")
    return value


def loads(text: bytes | str, field: str) -> Any:
    """Parses JSON text from the client within the limits in the module docstring.

    Raises:
        TranscodeError: Not JSON, nested deeper than MAX_JSON_DEPTH, or a number that is not
            finite; `field` names where the text came from ("" for the body).
    """
    raw = text.encode() if isinstance(text, str) else text
    where = "the request body" if not field else "the value"
    if json_depth(raw) > MAX_JSON_DEPTH:
        raise TranscodeError(field, f"{where} nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        return json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TranscodeError(field, f"{where} is not valid JSON: {exc}") from None
    except RecursionError:  # unreachable after the depth check; kept as a last guard
        raise TranscodeError(field, f"{where} nests too deeply") from None


def check_bytes_fields(document: Any, descriptor: _descriptor.Descriptor, path: str = "") -> None:
    """Checks that every bytes field of a JSON request is strict base64.

    json_format skips characters outside the alphabet, so `"@@@@"` would silently become
    empty bytes; a signature or key must not be mangled that way.

    Raises:
        TranscodeError: Naming the first bytes field that is not base64.
    """
    if not isinstance(document, dict):
        return
    for name, value in document.items():
        field = _field(descriptor, name) if isinstance(name, str) else None
        if field is None or value is None:
            continue
        dotted = f"{path}.{field.name}" if path else field.name
        if _is_map(field) and field.message_type is not None:
            value_field = field.message_type.fields_by_name["value"]
            values = list(value.values()) if isinstance(value, dict) else []
        else:
            value_field = field
            values = value if field.is_repeated and isinstance(value, list) else [value]
        for item in values:
            _check_bytes_value(value_field, item, dotted)


def _check_bytes_value(field: _FD, value: Any, dotted: str) -> None:
    if field.type == _FD.TYPE_BYTES:
        if isinstance(value, str) and not _is_base64(value):
            raise TranscodeError(dotted, "expected base64 (standard or URL-safe alphabet)")
    elif field.message_type is not None and not field.message_type.full_name.startswith(
        _WRAPPER_PREFIX
    ):
        check_bytes_fields(value, field.message_type, dotted)
    elif field.message_type is not None and field.message_type.full_name.endswith(".BytesValue"):
        _check_bytes_value(field.message_type.fields_by_name["value"], value, dotted)


def _is_base64(text: str) -> bool:
    if _BASE64.fullmatch(text) is None or len(text.rstrip("=")) % 4 == 1:
        return False
    try:
        base64.urlsafe_b64decode(text.replace("+", "-").replace("/", "_") + "==")
    except (binascii.Error, ValueError):
        return False
    return True


def _apply_query(
    route: Route,
    request: Message,
    descriptor: _descriptor.Descriptor,
    path_fields: Iterable[str],
    query: Iterable[tuple[str, str]],
) -> None:
    grouped: dict[str, list[str]] = {}
    for name, value in query:
        grouped.setdefault(name, []).append(value)
    bound = _bound_prefixes(route, path_fields)
    for name, values in grouped.items():
        chain = resolve_field_path(descriptor, name)
        if chain is None:
            raise TranscodeError(name, f"unknown query parameter for {descriptor.full_name}")
        proto_path = ".".join(f.name for f in chain)
        if any(proto_path == b or proto_path.startswith(b + ".") for b in bound):
            raise TranscodeError(name, "is bound by the path or the body, not the query")
        leaf = chain[-1]
        if _is_map(leaf):
            raise TranscodeError(name, "a map cannot come from the query string")
        if _is_repeated(leaf):
            _assign(request, chain, [_scalar_json(leaf, v, name) for v in values], name)
        else:
            if len(values) > 1:
                raise TranscodeError(name, "is not repeated but was given more than once")
            _assign(request, chain, _scalar_json(leaf, values[0], name), name)


def to_json_dict(message: Message) -> dict[str, Any]:
    """The JSON form of a message: proto field names, zero values included (as
    `json_format.MessageToDict` prints it; see `gateway.protojson`)."""
    document: dict[str, Any] = protojson.to_json_dict(message)
    return document


def render_response(route: Route, message: Message) -> Any:
    """The JSON value sent for a response: the whole message or its `response_body` field."""
    document = to_json_dict(message)
    if route.response_body:
        return document.get(route.response_body)
    return document


# Made once: `json.dumps` with options builds a new encoder for every document.
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dumps(document: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return _COMPACT.encode(document).encode()
