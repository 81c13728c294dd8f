"""Bad input at the gateway: every case is a clear 4xx naming the problem, never a 5xx,
a mangled value or a call left hanging."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import httpx
import pytest

from gateway.app import MAX_FORWARDED_HEADER_BYTES
from gateway.routes import RouteTable, discover_services
from gateway.server import Gateway, build_app
from gateway.transcode import MAX_JSON_DEPTH, TranscodeError, build_request, json_depth
from tests.gateway.conftest import Stack, gateway_config


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


@pytest.fixture(scope="module")
def table() -> RouteTable:
    return RouteTable.from_services(discover_services())


def publish(table: RouteTable, body: str) -> None:
    match = table.match("POST", "/domains/events/publish")
    assert match.route is not None
    build_request(match.route, match.bindings, [], body.encode())


def test_json_depth_ignores_brackets_inside_strings() -> None:
    assert json_depth(b'{"a":[1,{"b":"[[[{{{"}]}') == 3
    assert json_depth(b'"\\"{"') == 0
    assert json_depth(nested(1000).encode()) == 1000


def test_event_data_nested_a_thousand_levels_is_refused_before_parsing(table: RouteTable) -> None:
    body = '{"event_type":"a","source_domain":"b","data":' + nested(1000) + "}"
    with pytest.raises(TranscodeError, match=f"nests deeper than {MAX_JSON_DEPTH} levels"):
        publish(table, body)


def test_event_data_at_the_depth_limit_still_decodes_upstream(table: RouteTable) -> None:
    match = table.match("POST", "/domains/events/publish")
    assert match.route is not None
    body = '{"event_type":"a","source_domain":"b","data":' + nested(MAX_JSON_DEPTH - 1) + "}"
    message = build_request(match.route, match.bindings, [], body.encode())
    # What the event bus will do with it: protobuf decoders stop at 100 levels.
    assert type(message).FromString(message.SerializeToString()) == message


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_event_data_with_a_number_that_is_not_finite_is_refused(
    table: RouteTable, number: str
) -> None:
    with pytest.raises(TranscodeError, match=r"finite|out of range"):
        publish(table, '{"event_type":"a","source_domain":"b","data":{"x":' + number + "}}")


@pytest.mark.parametrize("signature", ["@@@@", "not base64!", "AAAAA", "QUJD\n"])
def test_a_signature_that_is_not_base64_is_refused_naming_the_field(
    table: RouteTable, signature: str
) -> None:
    body = '{"event_type":"a","source_domain":"b","signature":"' + signature + '"}'
    with pytest.raises(TranscodeError) as raised:
        publish(table, body.replace("\n", "\\n"))
    assert raised.value.field == "signature"


@pytest.mark.parametrize("signature", ["AAEC", "AAE", "AAE=", "-_-_", "+/+/"])
def test_a_signature_in_either_base64_alphabet_with_or_without_padding_is_accepted(
    table: RouteTable, signature: str
) -> None:
    publish(table, '{"event_type":"a","source_domain":"b","signature":"' + signature + '"}')


async def test_a_body_nested_a_thousand_levels_is_400(stack: Stack) -> None:
    body = '{"domain_id":"d","port":1,"metadata":' + nested(1000) + "}"
    response = await stack.http.post(
        "/domains/register", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert "nests deeper" in response.json()["error"]["message"]


@pytest.mark.parametrize("value", ["\u00b9", "\u0663", "\uff11"])
async def test_an_enum_query_value_in_unicode_digits_is_400(stack: Stack, value: str) -> None:
    response = await stack.http.get("/domains/list", params={"status": value})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert "status" in response.json()["error"]["message"]


async def test_an_enum_query_value_in_ascii_digits_still_works(stack: Stack) -> None:
    response = await stack.http.get("/domains/list", params={"status": "3"})
    assert response.status_code == 200, response.text


async def test_a_nan_metric_in_a_heartbeat_is_400(stack: Stack) -> None:
    await stack.http.post("/domains/register", json={"domain_id": "d1", "port": 1})
    response = await stack.http.post(
        "/domains/heartbeat/d1",
        content=b'{"metrics":{"load":NaN}}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert "NaN" in response.json()["error"]["message"]


async def test_a_public_key_that_is_not_base64_is_400(stack: Stack) -> None:
    response = await stack.http.post(
        "/domains/register", json={"domain_id": "d2", "port": 1, "public_key": "@@@@"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["details"][0]["fieldViolations"][0]["field"] == "public_key"


@pytest.mark.parametrize("header", ["X-Actor", "Authorization", "X-Request-Id", "X-Anything"])
async def test_a_50_kb_header_is_431(stack: Stack, header: str) -> None:
    response = await stack.http.get("/domains/registry-stats", headers={header: "a" * 50_000})
    assert response.status_code == 431, response.text
    assert response.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert header.lower() in response.json()["error"]["message"]


async def test_forwarded_headers_just_within_the_limit_always_pass(stack: Stack) -> None:
    # Near gRPC's 8 KiB metadata limit the upstream refuses at random; below ours, never.
    value = "a" * (MAX_FORWARDED_HEADER_BYTES - len("x-actor") - 64)
    for _ in range(20):
        response = await stack.http.get("/domains/registry-stats", headers={"X-Actor": value})
        assert response.status_code == 200, response.text
    over = await stack.http.get("/domains/registry-stats", headers={"X-Actor": value + "a" * 65})
    assert over.status_code == 431


async def test_a_describe_of_a_component_registered_as_a_domain_is_404_with_a_reason(
    stack: Stack,
) -> None:
    port = int(stack.registry_address.rsplit(":", 1)[1])
    await stack.http.post("/domains/register", json={"domain_id": "registry", "port": port})
    for method, path in [
        ("GET", "/domains/describe/registry"),
        ("POST", "/domains/invoke/registry/run"),
        ("POST", "/domains/compensate/registry/run"),
    ]:
        response = await stack.http.request(method, path, json={} if method == "POST" else None)
        assert response.status_code == 404, (path, response.text)
        error = response.json()["error"]
        assert "is not a domain" in error["message"]
        assert error["details"][0]["reason"] == "NOT_A_DOMAIN"


async def test_a_content_length_larger_than_the_body_is_400_promptly_without_a_traceback(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    config = gateway_config({"GRACE_REGISTRY_ADDR": stack.registry_address}, body_idle_s=0.5)
    async with Gateway(config, build_app(config)) as gateway:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        body = b'{"domain_id":"x"}'
        writer.write(
            b"POST /domains/register HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body) + 100, body)
        )
        await writer.drain()
        started = time.monotonic()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=20)
        elapsed = time.monotonic() - started
        writer.close()
        assert head.startswith(b"HTTP/1.1 400"), head
        assert elapsed < 15  # it answers instead of waiting for bytes that never come
        # A client that leaves mid-body gets no answer and leaves no trace in the log.
        _, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(b"POST /domains/register HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{")
        await writer.drain()
        writer.close()
        await asyncio.sleep(0.3)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


async def test_no_two_openapi_paths_are_the_same_template(stack: Stack) -> None:
    document = (await stack.http.get("/openapi.json")).json()
    shapes: dict[str, str] = {}
    for path in document["paths"]:
        shape = re.sub(r"\{[^}]*\}", "{}", path)
        assert shape not in shapes, f"{path} and {shapes[shape]} are the same template"
        shapes[shape] = path
    assert "/kernels/governance/policies/{policy_id}" in document["paths"]


async def test_every_bad_input_answer_is_json_with_an_error_body(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway.url) as http:
        response = await http.get("/domains/list", params={"status": "\u00b9"})
    assert set(response.json()["error"]) == {"code", "status", "message", "details"}
