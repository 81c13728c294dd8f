"""The OpenAPI 3.1 document of the gateway, generated from the same descriptors as the routes.

Schemas follow the proto3 JSON mapping as the gateway speaks it: proto field names, 64-bit
integers as strings (numbers accepted on input), enums by name, Timestamp as RFC 3339,
Duration as `"1.5s"`, Struct as an object with free properties. Descriptions are the proto
comments.

A message has two schemas when it travels both ways: the reply form (its plain full name)
lists as `required` every field the gateway always writes (every field without presence:
scalars, enums, repeated fields and maps), so generated clients need no checks for them;
the input form (`<name>Input`) requires nothing, as proto3 treats a missing field as its
default. Operation ids are the RPC names in lower camel case (`registerDomain`), prefixed
with the service where two services share an RPC name (`eventBusGetStats`). Limits the
servers enforce on common fields (ids, page sizes, patterns) are part of the schemas.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import descriptor as _descriptor

from gateway.routes import Route, RouteTable
from gateway.transcode import resolve_field_path
from services.common.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from services.common.patterns import MAX_PATTERN_LENGTH
from services.common.validation import ID_PATTERN, MAX_ID_LENGTH

_FD = _descriptor.FieldDescriptor
_QUERY_DEPTH = 3

_SCALARS: dict[int, dict[str, Any]] = {
    _FD.TYPE_DOUBLE: {"type": "number", "format": "double"},
    _FD.TYPE_FLOAT: {"type": "number", "format": "float"},
    _FD.TYPE_INT32: {"type": "integer", "format": "int32"},
    _FD.TYPE_SINT32: {"type": "integer", "format": "int32"},
    _FD.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    _FD.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295},
    _FD.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295},
    _FD.TYPE_INT64: {"type": ["string", "integer"], "format": "int64"},
    _FD.TYPE_SINT64: {"type": ["string", "integer"], "format": "int64"},
    _FD.TYPE_SFIXED64: {"type": ["string", "integer"], "format": "int64"},
    _FD.TYPE_UINT64: {"type": ["string", "integer"], "format": "uint64"},
    _FD.TYPE_FIXED64: {"type": ["string", "integer"], "format": "uint64"},
    _FD.TYPE_BOOL: {"type": "boolean"},
    _FD.TYPE_STRING: {"type": "string"},
    _FD.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}

_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
    },
    "google.protobuf.DoubleValue": {"type": ["number", "null"]},
    "google.protobuf.FloatValue": {"type": ["number", "null"]},
    "google.protobuf.Int64Value": {"type": ["string", "integer", "null"]},
    "google.protobuf.UInt64Value": {"type": ["string", "integer", "null"]},
    "google.protobuf.Int32Value": {"type": ["integer", "null"]},
    "google.protobuf.UInt32Value": {"type": ["integer", "null"]},
    "google.protobuf.BoolValue": {"type": ["boolean", "null"]},
    "google.protobuf.StringValue": {"type": ["string", "null"]},
    "google.protobuf.BytesValue": {"type": ["string", "null"]},
}

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Every error: the HTTP status, the gRPC code name, a message naming the "
    "field or resource, and the google.rpc.Status details (ErrorInfo, BadRequest, ...).",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "integer"},
                "status": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "array", "items": {"type": "object"}},
            },
            "required": ["code", "status", "message", "details"],
        }
    },
    "required": ["error"],
}


# Limits the servers enforce on fields of these names (services.common validation, patterns
# and pagination), documented in the schemas.
_ID_LIMITS: dict[str, Any] = {
    "type": "string",
    "maxLength": MAX_ID_LENGTH,
    # Empty means "not set" (a filter left out), as everywhere in proto3.
    "pattern": f"^({ID_PATTERN.pattern})?$",
}
FIELD_LIMITS: dict[str, dict[str, Any]] = {
    "domain_id": _ID_LIMITS,
    "source_domain": _ID_LIMITS,
    "subscription_id": _ID_LIMITS,
    "dead_letter_id": _ID_LIMITS,
    "page_size": {
        "type": "integer",
        "format": "int32",
        "minimum": 0,
        "maximum": MAX_PAGE_SIZE,
        "default": DEFAULT_PAGE_SIZE,
    },
    "pattern": {"type": "string", "maxLength": MAX_PATTERN_LENGTH},
    "patterns": {"type": "string", "maxLength": MAX_PATTERN_LENGTH},
}
_INPUT_SUFFIX = "Input"
_REF = "#/components/schemas/"


def operation_id(method: _descriptor.MethodDescriptor, qualified: bool) -> str:
    """`registerDomain`; qualified by the service (`eventBusGetStats`) when names clash."""
    name = method.name
    if qualified:
        name = method.containing_service.name.removesuffix("Service") + name
    return name[0].lower() + name[1:]


class OpenApiBuilder:
    """Builds the document; `schemas` collects every message reached, in each direction."""

    def __init__(self, comments: Mapping[str, str]) -> None:
        self.comments = comments
        self.schemas: dict[str, Any] = {"grace.gateway.Error": ERROR_SCHEMA}

    def ref(self, message: _descriptor.Descriptor, reply: bool = False) -> dict[str, Any]:
        """A schema reference to a message's reply or input form, defining it on first use."""
        if message.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[message.full_name])
        name = message.full_name if reply else message.full_name + _INPUT_SUFFIX
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder: recursion stops here
            self.schemas[name] = self._message_schema(message, reply)
        return {"$ref": _REF + name}

    def _message_schema(self, message: _descriptor.Descriptor, reply: bool) -> dict[str, Any]:
        properties = {f.name: self.field_schema(f, reply) for f in message.fields}
        schema: dict[str, Any] = {
            "type": "object",
            "properties": properties,
            "additionalProperties": False,
        }
        required = [f.name for f in message.fields if not f.has_presence] if reply else []
        if required:
            schema["required"] = required
        description = self.comments.get(message.full_name)
        if description:
            schema["description"] = description
        return schema

    def finish(self, document: dict[str, Any]) -> dict[str, Any]:
        """Gives an input form its message's plain name where no reply form has it."""
        renames = {
            _REF + name: _REF + name.removesuffix(_INPUT_SUFFIX)
            for name in self.schemas
            if name.endswith(_INPUT_SUFFIX) and name.removesuffix(_INPUT_SUFFIX) not in self.schemas
        }
        self.schemas = {
            (name.removesuffix(_INPUT_SUFFIX) if _REF + name in renames else name): schema
            for name, schema in self.schemas.items()
        }
        document["components"] = {"schemas": dict(sorted(self.schemas.items()))}
        renamed: dict[str, Any] = _rename_refs(document, renames)
        return renamed

    def value_schema(self, field: _FD, reply: bool = False) -> dict[str, Any]:
        """The schema of one value of a field (ignoring `repeated`)."""
        if field.message_type is not None:
            return self.ref(field.message_type, reply)
        if field.enum_type is not None:
            schema: dict[str, Any] = {
                "type": "string",
                "enum": [v.name for v in field.enum_type.values],
            }
            description = self.comments.get(field.enum_type.full_name)
            prefix = field.enum_type.full_name
            values = [
                f"{v.name}: {self.comments[f'{prefix}.{v.name}']}"
                for v in field.enum_type.values
                if f"{prefix}.{v.name}" in self.comments
            ]
            if description or values:
                schema["description"] = "\n".join(filter(None, [description, *values]))
            return schema
        scalar = dict(_SCALARS[field.type])
        limits = FIELD_LIMITS.get(field.name)
        if limits is not None and limits["type"] == scalar["type"]:
            scalar.update(limits)
        return scalar

    def field_schema(self, field: _FD, reply: bool = False) -> dict[str, Any]:
        """The schema of a field, with its comment."""
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            schema: dict[str, Any] = {
                "type": "object",
                "additionalProperties": self.value_schema(value_field, reply),
            }
        elif field.is_repeated:
            schema = {"type": "array", "items": self.value_schema(field, reply)}
        else:
            schema = self.value_schema(field, reply)
        description = self.comments.get(field.full_name)
        if description:
            if "$ref" in schema:
                schema = {"allOf": [schema], "description": description}
            else:
                schema["description"] = description
        return schema

    def query_parameters(
        self, message: _descriptor.Descriptor, bound: set[str], prefix: str = "", depth: int = 0
    ) -> list[dict[str, Any]]:
        """Query parameters for every field not bound by the path or body (dotted names)."""
        parameters: list[dict[str, Any]] = []
        for field in message.fields:
            name = prefix + field.name
            if name in bound:
                continue
            nested = field.message_type
            if nested is not None and nested.GetOptions().map_entry:
                continue
            if nested is not None and nested.full_name not in _WELL_KNOWN and not field.is_repeated:
                if depth < _QUERY_DEPTH:
                    parameters.extend(self.query_parameters(nested, bound, name + ".", depth + 1))
                continue
            if nested is not None and nested.full_name not in _WELL_KNOWN:
                continue  # repeated messages cannot come from the query string
            if nested is not None and nested.full_name in (
                "google.protobuf.Struct",
                "google.protobuf.ListValue",
                "google.protobuf.Value",
                "google.protobuf.Any",
                "google.protobuf.Empty",
            ):
                value: dict[str, Any] = {"type": "string", "description": "JSON text"}
            else:
                value = self.value_schema(field)
            schema = {"type": "array", "items": value} if field.is_repeated else value
            parameter: dict[str, Any] = {"name": name, "in": "query", "schema": schema}
            description = self.comments.get(field.full_name)
            if description:
                parameter["description"] = description
            parameters.append(parameter)
        return parameters

    def operation(self, route: Route, qualified: bool = False) -> dict[str, Any]:
        """The OpenAPI operation of a route (`qualified`: its id names the service)."""
        method = route.method
        request = method.input_type
        parameters: list[dict[str, Any]] = []
        for variable in route.template.variables:
            chain = resolve_field_path(request, variable.field_path)
            assert chain is not None
            schema = self.value_schema(chain[-1])
            parameter: dict[str, Any] = {
                "name": variable.field_path,
                "in": "path",
                "required": True,
                "schema": schema,
            }
            description = self.comments.get(chain[-1].full_name)
            if description:
                parameter["description"] = description
            parameters.append(parameter)
        for index in range(route.template.wildcard_count()):
            parameters.append(
                {
                    "name": f"_wildcard{index + 1}",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                }
            )
        bound = {v.field_path for v in route.template.variables}
        operation: dict[str, Any] = {
            "operationId": operation_id(method, qualified),
            "tags": [method.containing_service.full_name],
            "summary": f"{method.containing_service.name}.{method.name}",
        }
        description = self.comments.get(method.full_name)
        if description:
            operation["description"] = description
        if route.body == "*":
            body_schema = self.ref(request)
        elif route.body:
            chain = resolve_field_path(request, route.body)
            assert chain is not None
            body_schema = self.field_schema(chain[-1])
            bound.add(route.body)
        if route.body:
            operation["requestBody"] = {
                "required": False,
                "content": {"application/json": {"schema": body_schema}},
            }
        else:
            parameters.extend(self.query_parameters(request, bound))
        if parameters:
            operation["parameters"] = parameters
        if route.response_body:
            field = method.output_type.fields_by_name[route.response_body]
            response_schema = self.field_schema(field, reply=True)
        else:
            response_schema = self.ref(method.output_type, reply=True)
        if route.server_streaming:
            content = {
                "application/x-ndjson": {"schema": response_schema},
                "text/event-stream": {"schema": {"type": "string"}},
            }
            response_description = (
                "A stream of messages: newline-delimited JSON (one message of the schema per "
                "line), or Server-Sent Events when the client accepts text/event-stream: each "
                "message as `data:`, with `event:` the RPC name in snake case and `id:` its "
                "resume point (sent back as `Last-Event-ID` on reconnect), and a `: ping` "
                "comment on an idle stream. An error after the stream began arrives as a last "
                "line (or `event: error`) holding the error body."
            )
        else:
            content = {"application/json": {"schema": response_schema}}
            response_description = "OK"
        operation["responses"] = {
            "200": {"description": response_description, "content": content},
            "default": {
                "description": "An error.",
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/grace.gateway.Error"}
                    }
                },
            },
        }
        return operation


_PATH_PARAMETER = re.compile(r"\{([^}]*)\}")


def _canonical_paths(paths: Iterable[str]) -> dict[str, str]:
    """Each path -> the one path OpenAPI sees for its template.

    OpenAPI holds `/policies/{policy_id}` and `/policies/{policy.policy_id}` to be the same
    template, which a document may not list twice. Such paths are merged under the one with
    the plainest parameter names (fewest dots); the others' operations rename their path
    parameters to match (the gateway matches by position, so the names are only labels).
    """
    shapes: dict[str, list[str]] = {}
    for path in paths:
        shapes.setdefault(_PATH_PARAMETER.sub("{}", path), []).append(path)
    result: dict[str, str] = {}
    for group in shapes.values():
        chosen = min(group, key=lambda p: (p.count("."), p))
        result.update(dict.fromkeys(group, chosen))
    return result


def _rename_path_parameters(operation: dict[str, Any], path: str, canonical: str) -> None:
    renames = dict(
        zip(_PATH_PARAMETER.findall(path), _PATH_PARAMETER.findall(canonical), strict=True)
    )
    for parameter in operation.get("parameters", []):
        if parameter["in"] == "path" and parameter["name"] in renames:
            old = parameter["name"]
            parameter["name"] = renames[old]
            note = f"Sets `{old}` of the request."
            described = parameter.get("description")
            parameter["description"] = f"{note} {described}" if described else note


def build_openapi(
    table: RouteTable,
    comments: Mapping[str, str],
    builtin_paths: Mapping[str, Mapping[str, Any]],
    *,
    version: str = "0.1.0",
) -> dict[str, Any]:
    """The whole OpenAPI 3.1 document.

    Args:
        table: The routes.
        comments: Proto comments by full name (`gateway.comments.load_comments`).
        builtin_paths: The gateway's own paths, already in OpenAPI form.
        version: The API version reported in `info`.
    """
    builder = OpenApiBuilder(comments)
    paths: dict[str, dict[str, Any]] = {}
    operation_ids: set[str] = set()
    routes = sorted(table.routes, key=lambda r: (r.template.openapi_path(), r.http_method))
    canonical = _canonical_paths(r.template.openapi_path() for r in routes)
    services_of: dict[str, set[str]] = {}
    for route in routes:
        method = route.method
        services_of.setdefault(method.name, set()).add(method.containing_service.full_name)
    for route in routes:
        operation = builder.operation(route, qualified=len(services_of[route.method.name]) > 1)
        base_id = operation["operationId"]
        suffix = 2
        while operation["operationId"] in operation_ids:
            operation["operationId"] = f"{base_id}{suffix}"
            suffix += 1
        operation_ids.add(operation["operationId"])
        path = route.template.openapi_path()
        if canonical[path] != path:
            _rename_path_parameters(operation, path, canonical[path])
        paths.setdefault(canonical[path], {})[route.http_method.lower()] = operation
    for path, operations in builtin_paths.items():
        paths.setdefault(path, {}).update(operations)
    tags = []
    for service in table.services():
        tag: dict[str, Any] = {"name": service.full_name}
        if service.full_name in comments:
            tag["description"] = comments[service.full_name]
        tags.append(tag)
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "Grace REST API",
            "version": version,
            "description": "REST/JSON transcoding of every Grace gRPC service, generated from "
            "the google.api.http annotations of the protos. JSON uses the proto field names; "
            "camelCase names are accepted on input.",
        },
        "servers": [{"url": "/", "description": "This gateway."}],
        "tags": tags,
        "paths": dict(sorted(paths.items())),
    }
    return builder.finish(document)


def _rename_refs(value: Any, renames: Mapping[str, str]) -> Any:
    """`value` with every `$ref` in `renames` replaced."""
    if isinstance(value, dict):
        return {
            k: (
                renames.get(v, v)
                if k == "$ref" and isinstance(v, str)
                else _rename_refs(v, renames)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_rename_refs(v, renames) for v in value]
    return value
