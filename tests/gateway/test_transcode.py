"""Route building and request/response transcoding over the test-only proto."""

from __future__ import annotations

import re
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as _descriptor
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from gateway.errors import decode_details, from_rpc_error
from gateway.routes import RouteTable, component_for, discover_services
from gateway.transcode import TranscodeError, build_request, render_response


@pytest.fixture
def table(library_service: _descriptor.ServiceDescriptor) -> RouteTable:
    return RouteTable.from_services([library_service])


def call(
    table: RouteTable,
    method: str,
    path: str,
    query: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> tuple[str, Message]:
    match = table.match(method, path)
    assert match.route is not None, f"{method} {path} did not match"
    return match.route.method.name, build_request(match.route, match.bindings, query or [], body)


@pytest.mark.parametrize(
    ("package", "component"),
    [
        ("grace.registry.v1", "registry"),
        ("grace.eventbus.v1", "eventbus"),
        ("grace.memory.v1", "memory"),
        ("grace.orchestrator.v1", "orchestrator"),
        ("grace.guardian.v1", "guardian"),
        ("grace.kernels.immutable_log.v1", "immutable_log"),
        ("grace.kernels.immune.v2beta1", "immune"),
    ],
)
def test_a_proto_package_names_its_component(package: str, component: str) -> None:
    assert component_for(package) == component


def test_every_binding_becomes_a_route_including_additional_and_custom_ones(
    table: RouteTable,
) -> None:
    routes = {(r.http_method, r.template.text) for r in table}
    assert ("GET", "/v1/books/{book.id}") in routes  # additional_bindings
    assert ("HEAD", "/v1/probe/{path}") in routes  # custom
    assert ("POST", "/v1/books/{book.id}:cancel") in routes
    assert len(table) == 11


def test_a_literal_route_wins_over_a_variable_one(table: RouteTable) -> None:
    name, _ = call(table, "GET", "/v1/shelves/list/books")
    assert name == "ListAll"
    name, request = call(table, "GET", "/v1/shelves/other/books")
    assert name == "ListBooks"
    assert request.shelf == "other"  # type: ignore[attr-defined]


def test_unknown_paths_are_404_and_known_paths_with_another_method_are_405(
    table: RouteTable,
) -> None:
    assert table.match("GET", "/v1/nowhere").route is None
    assert table.match("GET", "/v1/nowhere").allowed == ()
    wrong = table.match("PUT", "/v1/books/7")
    assert wrong.route is None
    assert wrong.allowed == ("DELETE", "GET", "PATCH")


def test_path_variables_fill_nested_and_multi_segment_fields(table: RouteTable) -> None:
    _, request = call(table, "GET", "/v1/shelves/s1/books/b%202")
    assert request.name == "shelves/s1/books/b 2"  # type: ignore[attr-defined]
    _, request = call(table, "GET", "/v1/books/42")
    assert request.book.id == "42"  # type: ignore[attr-defined]
    name, request = call(table, "POST", "/v1/books/9:cancel")
    assert (name, request.book.id) == ("CancelBook", "9")  # type: ignore[attr-defined]
    name, request = call(table, "GET", "/v1/files/a/b/c.txt")
    assert (name, request.path) == ("GetFile", "a/b/c.txt")  # type: ignore[attr-defined]


def test_query_parameters_fill_every_kind_of_field(table: RouteTable) -> None:
    _, request = call(
        table,
        "GET",
        "/v1/shelves/s/books",
        [
            ("genre", "GENRE_FICTION"),
            ("tags", "a"),
            ("tags", "b"),
            ("publishedAfter", "2026-01-02T03:04:05Z"),
            ("loan", "1.5s"),
            ("filter", '{"lang": "en", "n": 2}'),
            ("example.title", "Dune"),
            ("example.copies", "9007199254740993"),
            ("limit", "10"),
            ("include_out_of_print", "true"),
            ("min_rating", "4.5"),
        ],
    )
    r: Any = request
    assert r.genre == 1
    assert list(r.tags) == ["a", "b"]
    assert r.published_after.seconds == 1767323045
    assert (r.loan.seconds, r.loan.nanos) == (1, 500_000_000)
    assert dict(r.filter) == {"lang": "en", "n": 2.0}
    assert r.example.title == "Dune"
    assert r.example.copies == 9007199254740993
    assert r.limit.value == 10
    assert r.include_out_of_print is True
    assert r.min_rating == 4.5
    _, by_number = call(table, "GET", "/v1/shelves/s/books", [("genre", "2")])
    assert by_number.genre == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ([("nope", "1")], "nope"),
        ([("genre", "GENRE_NOPE")], "genre"),
        ([("include_out_of_print", "maybe")], "include_out_of_print"),
        ([("min_rating", "high")], "min_rating"),
        ([("example.page_count", "many")], "example.page_count"),
        ([("shelf", "x")], "shelf"),  # bound by the path
        ([("example", "x")], "example"),  # a message
        ([("genre", "1"), ("genre", "2")], "genre"),  # not repeated
        ([("published_after", "yesterday")], "published_after"),
        ([("filter", "{not json")], "filter"),
    ],
)
def test_bad_query_parameters_name_the_field(
    table: RouteTable, query: list[tuple[str, str]], field: str
) -> None:
    match = table.match("GET", "/v1/shelves/s/books")
    assert match.route is not None
    with pytest.raises(TranscodeError) as caught:
        build_request(match.route, match.bindings, query, b"")
    assert caught.value.field == field


def test_a_named_body_fills_one_field_and_the_query_fills_the_rest(table: RouteTable) -> None:
    name, request = call(
        table,
        "POST",
        "/v1/shelves/s1/books",
        [("request_id", "r-1")],
        b'{"title": "Dune", "pageCount": 412, "attributes": {"a": [1, "x"]}}',
    )
    r: Any = request
    assert name == "CreateBook"
    assert (r.shelf, r.request_id, r.book.title, r.book.page_count) == ("s1", "r-1", "Dune", 412)
    assert r.book.attributes["a"][1] == "x"


def test_a_star_body_fills_the_request_and_the_path_wins(table: RouteTable) -> None:
    _, request = call(
        table, "PATCH", "/v1/books/7", body=b'{"id": "other", "title": "T", "in_print": true}'
    )
    r: Any = request
    assert (r.id, r.title, r.in_print) == ("7", "T", True)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"title": 5}', "title"),
        (b'{"page_count": "many"}', "page_count"),
        (b'{"unknown_field": 1}', "unknown_field"),
        (b'{"genre": "GENRE_NOPE"}', "GENRE_NOPE"),
    ],
)
def test_bad_bodies_are_rejected_with_a_message_naming_the_problem(
    table: RouteTable, body: bytes, fragment: str
) -> None:
    match = table.match("PATCH", "/v1/books/7")
    assert match.route is not None
    with pytest.raises(TranscodeError) as caught:
        build_request(match.route, match.bindings, [], body)
    assert fragment in str(caught.value)


def test_an_empty_body_is_an_empty_object_and_a_body_on_a_bodiless_route_is_refused(
    table: RouteTable,
) -> None:
    _, request = call(table, "PATCH", "/v1/books/7", body=b"")
    assert request.id == "7"  # type: ignore[attr-defined]
    match = table.match("DELETE", "/v1/books/7")
    assert match.route is not None
    with pytest.raises(TranscodeError):
        build_request(match.route, match.bindings, [], b'{"x": 1}')


def test_responses_use_proto_names_with_zero_values_and_honour_response_body(
    table: RouteTable,
) -> None:
    match = table.match("GET", "/v1/shelves/s/books")
    assert match.route is not None
    response = match.route.response_class(
        books=[{"id": "1", "copies": 3}]  # type: ignore[call-arg]
    )
    rendered = render_response(match.route, response)
    assert isinstance(rendered, list)
    assert rendered[0]["id"] == "1"
    assert rendered[0]["copies"] == "3"
    assert rendered[0]["page_count"] == 0
    assert rendered[0]["genre"] == "GENRE_UNSPECIFIED"
    assert rendered[0]["tags"] == []
    assert rendered[0]["in_print"] is False


class _FakeRpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode, message: str, trailing: Any) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), message)


def test_grpc_errors_map_to_http_statuses_with_their_decoded_details() -> None:
    info = error_details_pb2.ErrorInfo(reason="DOMAIN_NOT_FOUND", domain="grace")
    status = status_pb2.Status(code=code_pb2.NOT_FOUND, message="domain 'x' not found")
    status.details.add().Pack(info)
    trailer = [("grpc-status-details-bin", status.SerializeToString())]
    error = from_rpc_error(
        _FakeRpcError(grpc.StatusCode.NOT_FOUND, "domain 'x' not found", trailer), "registry"
    )
    assert (error.http_status, error.status) == (404, "NOT_FOUND")
    assert error.body()["error"]["details"][0]["reason"] == "DOMAIN_NOT_FOUND"
    assert decode_details([("grpc-status-details-bin", b"\xff\xff garbage")]) == []
    expected = {
        grpc.StatusCode.INVALID_ARGUMENT: 400,
        grpc.StatusCode.FAILED_PRECONDITION: 400,
        grpc.StatusCode.ALREADY_EXISTS: 409,
        grpc.StatusCode.PERMISSION_DENIED: 403,
        grpc.StatusCode.UNAUTHENTICATED: 401,
        grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
        grpc.StatusCode.UNAVAILABLE: 503,
        grpc.StatusCode.DEADLINE_EXCEEDED: 504,
        grpc.StatusCode.UNIMPLEMENTED: 501,
        grpc.StatusCode.CANCELLED: 499,
        grpc.StatusCode.INTERNAL: 500,
    }
    for code, http_status in expected.items():
        assert from_rpc_error(_FakeRpcError(code, "m", []), "x").http_status == http_status


def _scan(table: RouteTable, method: str, path: str) -> tuple[str, dict[str, str], tuple[str, ...]]:
    """What matching every route in order finds: the reference for the indexed lookup."""
    allowed: set[str] = set()
    for route in table:
        bindings = route.template.match(path)
        if bindings is None:
            continue
        if route.http_method == method:
            return route.grpc_path, bindings, ()
        allowed.add(route.http_method)
    return "", {}, tuple(sorted(allowed))


@pytest.mark.parametrize("grace", [True, False], ids=["grace", "library"])
def test_the_indexed_lookup_finds_what_scanning_every_route_finds(
    grace: bool, table: RouteTable
) -> None:
    if grace:
        table = RouteTable.from_services(discover_services())
    paths = {"/", "/nowhere", "/v1", "/domains", "/domains/x/y/z/w", "/domains/seg"}
    for route in table:
        filled = re.sub(r"\{[^}]*\}|\*\*|\*", "seg", route.template.text)
        paths.update({filled, filled + "/extra", filled.rsplit("/", 1)[0] or "/"})
        # Each segment in turn replaced by one no route names: the lookup by the first two
        # segments must fall back to the routes that take any segment there.
        parts = filled.split("/")
        for index in range(1, len(parts)):
            paths.add("/".join([*parts[:index], "other", *parts[index + 1 :]]))
    assert len(paths) > len(table)
    for path in sorted(paths):
        for method in ("GET", "POST", "DELETE", "PATCH", "PUT"):
            match = table.match(method, path)
            found = (
                match.route.grpc_path if match.route else "",
                match.bindings if match.route else {},
                match.allowed,
            )
            assert found == _scan(table, method, path), (method, path)
