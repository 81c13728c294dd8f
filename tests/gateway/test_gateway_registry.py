"""End to end: the real registry behind the real gateway, driven over HTTP."""

from __future__ import annotations

import asyncio
import json
import shutil

import httpx
import pytest
from openapi_spec_validator import validate

from gateway.app import parse_timeout
from gateway.config import GatewayConfig
from gateway.errors import HttpError
from gateway.server import Gateway, build_app
from services.common.codegen import PROTO_ROOT
from tests.gateway.conftest import Stack, gateway_config

# Seed 000, "Example 1: Register Domain", verbatim but for the port.
SEED_REGISTER_BODY = """{
    "domain_id": "ai_domain",
    "port": 8202,
    "capabilities": ["chat", "ml", "prediction"]
  }"""


async def register(stack: Stack, domain_id: str, *capabilities: str, port: int = 9000) -> None:
    response = await stack.http.post(
        "/domains/register",
        json={"domain_id": domain_id, "port": port, "capabilities": list(capabilities)},
    )
    assert response.status_code == 200, response.text


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_the_seed_register_domain_curl_example_works_verbatim(stack: Stack) -> None:
    process = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "-X",
        "POST",
        f"{stack.gateway.url}/domains/register",
        "-H",
        "Content-Type: application/json",
        "-d",
        SEED_REGISTER_BODY,
        "-w",
        "\n%{http_code}",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    body, _, status = out.decode().rpartition("\n")
    assert status == "200"
    document = json.loads(body)
    domain = document["domain"]
    assert document["created"] is True
    assert domain["domain_id"] == "ai_domain"
    assert domain["port"] == 8202
    assert domain["capabilities"] == ["chat", "ml", "prediction"]
    # No host in the body: the registry used the HTTP client's address (X-Forwarded-For).
    assert domain["host"] == "127.0.0.1"
    assert domain["address"] == "127.0.0.1:8202"
    assert domain["status"] == "DOMAIN_STATUS_HEALTHY"
    assert domain["version"] == ""  # zero values are present


async def test_the_registry_routes_of_the_seed_answer(stack: Stack) -> None:
    await register(stack, "ai_domain", "chat", "ml", "prediction")
    await register(stack, "data_domain", "ml", "ingest")
    http = stack.http

    listed = (await http.get("/domains/list", params={"page_size": 1})).json()
    assert [d["domain_id"] for d in listed["domains"]] == ["ai_domain"]
    assert listed["total_size"] == 2
    second = (
        await http.get(
            "/domains/list", params={"pageSize": 1, "page_token": listed["next_page_token"]}
        )
    ).json()
    assert [d["domain_id"] for d in second["domains"]] == ["data_domain"]
    filtered = (await http.get("/domains/list", params={"capability": "chat"})).json()
    assert [d["domain_id"] for d in filtered["domains"]] == ["ai_domain"]
    by_status = await http.get("/domains/list", params={"status": "DOMAIN_STATUS_UNHEALTHY"})
    assert by_status.json()["domains"] == []

    one = (await http.get("/domains/domain/data_domain")).json()
    assert one["domain"]["capabilities"] == ["ml", "ingest"]

    capabilities = (await http.get("/domains/capabilities")).json()["capabilities"]
    assert capabilities["ml"] == {"domain_ids": ["ai_domain", "data_domain"]}

    ranked = (await http.get("/domains/find-by-capability/ml")).json()["domains"]
    assert {r["domain"]["domain_id"] for r in ranked} == {"ai_domain", "data_domain"}
    assert all(0 <= r["score"] <= 1 for r in ranked)

    # The seed's heartbeat sends no body at all.
    beat = await http.post("/domains/heartbeat/ai_domain")
    assert beat.status_code == 200, beat.text
    assert beat.json()["domain"]["domain_id"] == "ai_domain"
    with_metrics = await http.post(
        "/domains/heartbeat/ai_domain",
        json={"metrics": {"load": 0.5, "latencyMs": 20, "success_rate": 0.9}, "degraded": True},
    )
    assert with_metrics.json()["domain"]["status"] == "DOMAIN_STATUS_DEGRADED"
    assert with_metrics.json()["domain"]["metrics"]["latency_ms"] == 20

    stats = (await http.get("/domains/registry-stats")).json()
    assert stats["total_domains"] == 2
    assert stats["domains_by_status"] == {"HEALTHY": 1, "DEGRADED": 1, "UNHEALTHY": 0}

    removed = await http.delete("/domains/domain/data_domain")
    assert removed.status_code == 200
    assert int(removed.json()["revision"]) > 0


async def test_headers_are_echoed_and_forwarded(stack: Stack) -> None:
    response = await stack.http.post(
        "/domains/register",
        json={"domain_id": "d1", "port": 1},
        headers={
            "X-Request-Id": "req-123",
            "X-Forwarded-For": "10.9.9.9",
            "X-Actor": "alice",
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        },
    )
    assert response.headers["x-request-id"] == "req-123"
    # The gateway sets x-forwarded-for to the HTTP client's address, whatever it claimed.
    assert response.json()["domain"]["host"] == "127.0.0.1"
    generated = await stack.http.get("/domains/registry-stats")
    assert len(generated.headers["x-request-id"]) == 32


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "grpc_status", "fragment"),
    [
        ("GET", "/domains/domain/nope", {}, 404, "NOT_FOUND", "nope"),
        ("GET", "/nowhere", {}, 404, "NOT_FOUND", "no route"),
        ("POST", "/domains/register", {"content": b"{bad json"}, 400, "INVALID_ARGUMENT", "JSON"),
        (
            "POST",
            "/domains/register",
            {"json": {"domain_id": "x", "port": "p"}},
            400,
            "INVALID_ARGUMENT",
            "port",
        ),
        (
            "POST",
            "/domains/register",
            {"json": {"domain_id": "x", "colour": 1}},
            400,
            "INVALID_ARGUMENT",
            "colour",
        ),
        (
            "POST",
            "/domains/register",
            {"json": {"domain_id": "x", "port": 0}},
            400,
            "INVALID_ARGUMENT",
            "port",
        ),
        (
            "GET",
            "/domains/list",
            {"params": {"page_size": "many"}},
            400,
            "INVALID_ARGUMENT",
            "page_size",
        ),
        ("GET", "/domains/list", {"params": {"bogus": "1"}}, 400, "INVALID_ARGUMENT", "bogus"),
        (
            "GET",
            "/domains/list",
            {"params": {"page_size": "5000"}},
            400,
            "INVALID_ARGUMENT",
            "page_size",
        ),
        ("POST", "/domains/heartbeat/nope", {}, 404, "NOT_FOUND", "nope"),
        (
            "GET",
            "/domains/list",
            {"headers": {"grpc-timeout": "soon"}},
            400,
            "INVALID_ARGUMENT",
            "grpc-timeout",
        ),
        (
            "POST",
            "/domains/register",
            {"content": b"{" + b" " * 70_000 + b"}"},
            413,
            "RESOURCE_EXHAUSTED",
            "larger",
        ),
        ("GET", "/domains/invoke/ghost/run", {}, 405, "UNIMPLEMENTED", "allowed: POST"),
        ("POST", "/domains/invoke/ghost/run", {"json": {}}, 404, "NOT_FOUND", "ghost"),
    ],
)
async def test_every_error_class_has_its_status_and_body(
    stack: Stack,
    method: str,
    path: str,
    kwargs: dict[str, object],
    status: int,
    grpc_status: str,
    fragment: str,
) -> None:
    response = await stack.http.request(method, path, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status
    assert error["status"] == grpc_status
    assert fragment in error["message"]
    assert isinstance(error["details"], list)


async def test_invalid_arguments_carry_the_registrys_bad_request_details(stack: Stack) -> None:
    response = await stack.http.post("/domains/register", json={"domain_id": "x", "port": 0})
    details = response.json()["error"]["details"]
    types = {d["@type"].rsplit("/", 1)[1] for d in details}
    assert types == {"google.rpc.ErrorInfo", "google.rpc.BadRequest"}
    bad = next(d for d in details if d["@type"].endswith("BadRequest"))
    assert bad["fieldViolations"][0]["field"] == "port"


async def test_wrong_method_is_405_with_allow(stack: Stack) -> None:
    response = await stack.http.put("/domains/domain/x")
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET"
    builtin = await stack.http.post("/domains/system/health")
    assert (builtin.status_code, builtin.headers["allow"]) == (405, "GET")


async def test_a_domain_registered_but_not_listening_is_503(stack: Stack) -> None:
    await register(stack, "ghost", port=1)
    response = await stack.http.post("/domains/invoke/ghost/run", json={"input": {"a": 1}})
    assert response.status_code == 503
    assert response.json()["error"]["status"] == "UNAVAILABLE"


async def test_a_down_upstream_is_503_and_shows_in_health_and_overview(tmp_path: object) -> None:
    config = gateway_config({"GRACE_REGISTRY_ADDR": "127.0.0.1:1"})
    async with (
        Gateway(config, build_app(config)) as gateway,
        httpx.AsyncClient(base_url=gateway.url, timeout=30) as http,
    ):
        down = await http.get("/domains/registry-stats")
        assert down.status_code == 503
        assert down.json()["error"]["status"] == "UNAVAILABLE"
        health = await http.get("/domains/system/health")
        assert health.status_code == 503
        assert health.json()["services"]["registry"]["status"] == "UNREACHABLE"
        overview = await http.get("/domains/system/overview")
        assert overview.status_code == 200
        assert overview.json()["services"]["registry"]["status"] == "down"
        assert (await http.get("/healthz")).status_code == 200


async def test_system_health_and_overview_cover_the_registry(stack: Stack) -> None:
    await register(stack, "ai_domain", "ml")
    health = await stack.http.get("/domains/system/health")
    body = health.json()
    assert body["services"]["registry"]["status"] == "SERVING"
    # Only the registry runs here; any other configured component is down, hence 503.
    others_down = any(s["status"] != "SERVING" for s in body["services"].values())
    assert health.status_code == (503 if others_down else 200)
    overview = (await stack.http.get("/domains/system/overview")).json()
    registry = overview["services"]["registry"]
    assert registry["status"] == "up"
    assert registry["stats"]["GetRegistryStats"]["total_domains"] == 1
    assert overview["took_ms"] >= 0


async def test_deadline_headers_bound_the_call(stack: Stack) -> None:
    ok = await stack.http.get("/domains/list", headers={"X-Request-Timeout": "5"})
    assert ok.status_code == 200
    zero = await stack.http.get("/domains/list", headers={"grpc-timeout": "0S"})
    assert zero.status_code == 400


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, 30.0),
        ({"grpc-timeout": "250m"}, 0.25),
        ({"grpc-timeout": "2S", "x-request-timeout": "9"}, 2.0),
        ({"grpc-timeout": "1H"}, 300.0),
        ({"grpc-timeout": "5n"}, 0.001),
        ({"x-request-timeout": "1.5"}, 1.5),
    ],
)
def test_timeout_headers_are_parsed_capped_and_floored(
    headers: dict[str, str], expected: float
) -> None:
    assert parse_timeout(headers, 30.0, 300.0) == pytest.approx(expected)


@pytest.mark.parametrize(
    "headers", [{"grpc-timeout": "5"}, {"x-request-timeout": "-1"}, {"x-request-timeout": "nan"}]
)
def test_malformed_timeout_headers_are_400(headers: dict[str, str]) -> None:
    with pytest.raises(HttpError) as caught:
        parse_timeout(headers, 30.0, 300.0)
    assert caught.value.http_status == 400


async def test_watch_domains_streams_ndjson(stack: Stack) -> None:
    await register(stack, "ai_domain", "ml")
    async with stack.http.stream("GET", "/domains/watch") as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = response.aiter_lines()
        snapshot = json.loads(await anext(lines))
        assert snapshot["changes"][0]["kind"] == "CHANGE_KIND_SNAPSHOT"
        await register(stack, "data_domain", "ingest")
        change = json.loads(await anext(lines))
        assert change["changes"][0]["kind"] == "CHANGE_KIND_REGISTERED"
        assert change["changes"][0]["domain"]["domain_id"] == "data_domain"


async def test_watch_domains_streams_server_sent_events_and_resumes(stack: Stack) -> None:
    await register(stack, "ai_domain", "ml")
    revision = (await stack.http.get("/domains/registry-stats")).json()["revision"]
    async with stack.http.stream(
        "GET",
        "/domains/watch",
        params={"after_revision": revision},
        headers={"Accept": "text/event-stream"},
    ) as response:
        assert response.headers["content-type"] == "text/event-stream"
        await register(stack, "data_domain", "ingest")
        events = response.aiter_lines()
        frame = {}
        while (line := await anext(events)) != "":
            field, _, value = line.partition(": ")
            frame[field] = value
        message = json.loads(frame["data"])
        assert message["changes"][0]["domain"]["domain_id"] == "data_domain"
        assert frame["event"] == "watch_domains"
        assert frame["id"] == str(message["revision"])


async def test_a_stream_error_after_the_start_arrives_in_band(stack: Stack) -> None:
    async with stack.http.stream(
        "GET", "/domains/watch", headers={"X-Request-Timeout": "0.3"}
    ) as response:
        assert response.status_code == 200
        lines = [line async for line in response.aiter_lines()]
    assert json.loads(lines[-1])["error"]["status"] == "DEADLINE_EXCEEDED"


async def test_a_client_going_away_cancels_the_upstream_watch(stack: Stack) -> None:
    async with stack.http.stream("GET", "/domains/watch") as response:
        await anext(response.aiter_lines())
        assert len(stack.gateway.app.streams._calls) == 1
    for _ in range(200):
        if not stack.gateway.app.streams._calls:
            break
        await asyncio.sleep(0.05)
    assert not stack.gateway.app.streams._calls


async def test_the_openapi_document_is_valid_openapi_3_1_with_proto_comments(
    stack: Stack,
) -> None:
    document = (await stack.http.get("/openapi.json")).json()
    validate(document)
    assert document["openapi"] == "3.1.0"
    register_op = document["paths"]["/domains/register"]["post"]
    assert "Registers a domain" in register_op["description"]
    assert "/domains/watch" in document["paths"]
    assert "/domains/system/health" in document["paths"]
    domain = document["components"]["schemas"]["grace.registry.v1.Domain"]
    assert "Unique id" in domain["properties"]["domain_id"]["description"]
    list_params = {p["name"] for p in document["paths"]["/domains/list"]["get"]["parameters"]}
    assert {"page_size", "page_token", "status", "capability"} <= list_params


def test_the_config_reads_env_and_flags() -> None:
    from gateway.config import flag_parser

    config = GatewayConfig.from_env(
        {"GRACE_GATEWAY_PORT": "9000", "GRACE_GATEWAY_TIMEOUT_S": "2.5"},
        flag_parser().parse_args(["--port", "9100"]),
    )
    assert (config.port, config.default_timeout_s) == (9100, 2.5)
    assert config.proto_root == PROTO_ROOT
