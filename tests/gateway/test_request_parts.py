"""The per-request helpers of `gateway.app` (headers read once, request ids) and routing."""

from __future__ import annotations

import uuid

from starlette.datastructures import Headers

from gateway.app import header_dict, new_request_id
from gateway.routes import RouteTable, discover_services


def test_the_header_dict_answers_every_lookup_as_starlette_headers_do() -> None:
    # ASGI servers hand header names over in lower case.
    raw = [
        (b"host", b"gateway"),
        (b"authorization", b"Bearer first"),
        (b"x-actor", b"caf\xe9"),
        (b"authorization", b"Bearer second"),
    ]
    headers = header_dict(raw)
    starlette = Headers(raw=raw)
    for name in ("host", "authorization", "x-actor", "content-length", "x-request-id"):
        assert headers.get(name) == starlette.get(name), name
    assert headers["authorization"] == "Bearer first"  # a repeated header: the first value
    assert headers["x-actor"] == "café"  # latin-1, as ASGI servers hand header bytes over
    assert dict(starlette) == headers


def test_request_ids_are_version_4_uuids_in_hex() -> None:
    ids = {new_request_id() for _ in range(200)}
    assert len(ids) == 200
    for request_id in ids:
        parsed = uuid.UUID(hex=request_id)
        assert parsed.hex == request_id
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_routing_by_method_finds_the_route_and_the_405_names_every_other_method() -> None:
    table = RouteTable.from_services(discover_services())
    found = table.match("GET", "/domains/domain/ai_domain")
    assert found.route is not None
    assert found.route.http_method == "GET"
    assert found.route.grpc_path == "/grace.registry.v1.RegistryService/GetDomain"
    assert found.bindings == {"domain_id": "ai_domain"}
    deleted = table.match("DELETE", "/domains/domain/ai_domain")
    assert deleted.route is not None
    assert deleted.route.http_method == "DELETE"
    refused = table.match("PUT", "/domains/domain/ai_domain")
    assert refused.route is None
    assert refused.allowed == ("DELETE", "GET")
    assert table.match("GET", "/domains/nothing/here/at/all").allowed == ()
