"""The OpenAPI 3.1 document of the gateway, generated from the same descriptors as the routes.

Schemas follow the proto3 JSON mapping as the gateway speaks it: proto field names, 64-bit
integers as strings (numbers accepted on input), enums by name, Timestamp as RFC 3339,
Duration as `"1.5s"`, Struct as an object. Descriptions are the proto comments.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import descriptor as _descriptor

from gateway.routes import Route, RouteTable
from gateway.transcode import resolve_field_path

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
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
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


class OpenApiBuilder:
    """Builds the document; `schemas` collects every message reached."""

    def __init__(self, comments: Mapping[str, str]) -> None:
        self.comments = comments
        self.schemas: dict[str, Any] = {"grace.gateway.Error": ERROR_SCHEMA}

    def ref(self, message: _descriptor.Descriptor) -> dict[str, Any]:
        """A schema reference to a message, defining it on first use."""
        if message.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[message.full_name])
        if message.full_name not in self.schemas:
            self.schemas[message.full_name] = {}  # placeholder: recursion stops here
            self.schemas[message.full_name] = self._message_schema(message)
        return {"$ref": f"#/components/schemas/{message.full_name}"}

    def _message_schema(self, message: _descriptor.Descriptor) -> dict[str, Any]:
        properties = {f.name: self.field_schema(f) for f in message.fields}
        schema: dict[str, Any] = {
            "type": "object",
            "properties": properties,
            "additionalProperties": False,
        }
        description = self.comments.get(message.full_name)
        if description:
            schema["description"] = description
        return schema

    def value_schema(self, field: _FD) -> dict[str, Any]:
        """The schema of one value of a field (ignoring `repeated`)."""
        if field.message_type is not None:
            return self.ref(field.message_type)
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
        return dict(_SCALARS[field.type])

    def field_schema(self, field: _FD) -> dict[str, Any]:
        """The schema of a field, with its comment."""
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            schema: dict[str, Any] = {
                "type": "object",
                "additionalProperties": self.value_schema(value_field),
            }
        elif field.is_repeated:
            schema = {"type": "array", "items": self.value_schema(field)}
        else:
            schema = self.value_schema(field)
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

    def operation(self, route: Route) -> dict[str, Any]:
        """The OpenAPI operation of a route."""
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
            "operationId": f"{method.containing_service.full_name}.{method.name}",
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
            response_schema = self.field_schema(field)
        else:
            response_schema = self.ref(method.output_type)
        if route.server_streaming:
            content = {
                "application/x-ndjson": {"schema": response_schema},
                "text/event-stream": {"schema": {"type": "string"}},
            }
            response_description = (
                "A stream of messages: newline-delimited JSON (one message of the schema per "
                "line), or Server-Sent Events (one `data:` message each) when the client "
                "accepts text/event-stream. An error after the stream began arrives as a last "
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
    for route in routes:
        operation = builder.operation(route)
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
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Grace REST API",
            "version": version,
            "description": "REST/JSON transcoding of every Grace gRPC service, generated from "
            "the google.api.http annotations of the protos. JSON uses the proto field names; "
            "camelCase names are accepted on input.",
        },
        "tags": tags,
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": dict(sorted(builder.schemas.items()))},
    }
