"""What a browser needs from the gateway: CORS, resumable SSE with keep-alives, /docs."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from gateway.config import GatewayConfig
from gateway.server import Gateway, build_app
from services.common.config import ConfigError
from services.eventbus.server import EventBusServer
from services.registry.server import RegistryServer
from tests.eventbus.conftest import bus_config
from tests.gateway.conftest import Stack, gateway_config
from tests.registry.conftest import registry_config
from tests.support import serving

ORIGIN = "http://console.example:5173"


@pytest.fixture
async def browser_gateway(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A registry and an event bus behind a gateway that allows ORIGIN and pings every 0.2 s."""
    registry = RegistryServer(registry_config(tmp_path / "registry"))
    bus = EventBusServer(bus_config(tmp_path / "bus"))
    async with (
        serving(registry.config.server, registry) as (registry_server, _),
        serving(bus.config.server, bus) as (bus_server, _),
    ):
        config = gateway_config(
            {
                "GRACE_REGISTRY_ADDR": registry_server.address,
                "GRACE_EVENTBUS_ADDR": bus_server.address,
                "GRACE_GATEWAY_GOVERNANCE": "off",
            },
            cors_origins=(ORIGIN,),
            sse_ping_s=0.2,
        )
        async with (
            Gateway(config, build_app(config)) as gateway,
            httpx.AsyncClient(base_url=gateway.url, timeout=30) as http,
        ):
            yield http


async def _frames(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, str]]:
    """SSE messages as {field: value}; comments (pings) as {"": text}."""
    frame: dict[str, str] = {}
    async for line in lines:
        if line == "":
            if frame:
                yield frame
            frame = {}
        elif line.startswith(":"):
            yield {"": line[1:].strip()}
        else:
            field, _, value = line.partition(": ")
            frame[field] = value


async def _publish(http: httpx.AsyncClient, event_type: str) -> int:
    response = await http.post(
        "/domains/events/publish",
        json={"event_type": event_type, "source_domain": "ai_domain", "data": {"n": 1}},
    )
    assert response.status_code == 200, response.text
    return int(response.json()["sequence"])


async def test_a_preflight_from_an_allowed_origin_is_answered(
    browser_gateway: httpx.AsyncClient,
) -> None:
    response = await browser_gateway.options(
        "/domains/register",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    assert "authorization" in response.headers["access-control-allow-headers"].lower()


async def test_a_preflight_from_another_origin_is_refused(
    browser_gateway: httpx.AsyncClient,
) -> None:
    response = await browser_gateway.options(
        "/domains/register",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


async def test_a_cross_origin_call_can_read_its_answer_and_request_id(
    browser_gateway: httpx.AsyncClient,
) -> None:
    response = await browser_gateway.get("/domains/list", headers={"Origin": ORIGIN})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in response.headers["access-control-expose-headers"].lower()


async def test_without_configured_origins_no_cors_header_is_sent(stack: Stack) -> None:
    response = await stack.http.get("/domains/list", headers={"Origin": ORIGIN})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_cors_origins_come_from_the_environment_and_must_be_origins() -> None:
    config = GatewayConfig.from_env(
        {"GRACE_GATEWAY_CORS_ORIGINS": "https://a.example, http://localhost:5173/,"}
    )
    assert config.cors_origins == ("https://a.example", "http://localhost:5173")
    with pytest.raises(ConfigError, match="GRACE_GATEWAY_CORS_ORIGINS"):
        GatewayConfig.from_env({"GRACE_GATEWAY_CORS_ORIGINS": "https://a.example/console"})


async def test_event_stream_messages_carry_the_bus_sequence_and_resume_after_last_event_id(
    browser_gateway: httpx.AsyncClient,
) -> None:
    first = await _publish(browser_gateway, "ml.one")
    second = await _publish(browser_gateway, "ml.two")
    sse = {"Accept": "text/event-stream"}
    async with browser_gateway.stream(
        "GET",
        "/domains/events/stream",
        params={"pattern": "ml.*", "start": "START_POSITION_ALL"},
        headers=sse,
    ) as response:
        messages = _frames(response.aiter_lines())
        frame = await anext(messages)
        assert frame["event"] == "subscribe"
        assert frame["id"] == str(second)
        assert [e["sequence"] for e in json.loads(frame["data"])["events"]] == [
            str(first),
            str(second),
        ]
    # The browser reconnects with the last id it saw: only what came after arrives.
    third = await _publish(browser_gateway, "ml.three")
    async with browser_gateway.stream(
        "GET",
        "/domains/events/stream",
        params={"pattern": "ml.*", "start": "START_POSITION_ALL"},
        headers={**sse, "Last-Event-ID": str(first)},
    ) as response:
        frame = await anext(_frames(response.aiter_lines()))
        sequences = [int(e["sequence"]) for e in json.loads(frame["data"])["events"]]
        assert sequences == [second, third]


async def test_a_malformed_last_event_id_is_400_naming_the_header(
    browser_gateway: httpx.AsyncClient,
) -> None:
    response = await browser_gateway.get(
        "/domains/watch", headers={"Accept": "text/event-stream", "Last-Event-ID": "abc"}
    )
    assert response.status_code == 400
    assert "Last-Event-ID" in response.text


async def test_a_stream_without_a_resume_point_refuses_last_event_id(
    browser_gateway: httpx.AsyncClient,
) -> None:
    response = await browser_gateway.get(
        "/domains/workflows/executions/ex_000000000000000000000000/watch",
        headers={"Accept": "text/event-stream", "Last-Event-ID": "7"},
    )
    assert response.status_code == 400
    assert "cannot be resumed" in response.text


async def test_an_idle_event_stream_is_kept_alive_with_ping_comments(
    browser_gateway: httpx.AsyncClient,
) -> None:
    async with browser_gateway.stream(
        "GET", "/domains/watch", headers={"Accept": "text/event-stream"}
    ) as response:
        messages = _frames(response.aiter_lines())
        snapshot = await anext(messages)
        assert snapshot["event"] == "watch_domains"
        assert await asyncio.wait_for(anext(messages), 10) == {"": "ping"}
        assert await asyncio.wait_for(anext(messages), 10) == {"": "ping"}


async def test_a_browser_going_away_mid_stream_is_a_normal_end_without_error_logs(
    browser_gateway: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    for _ in range(3):
        async with browser_gateway.stream(
            "GET", "/domains/events/stream", headers={"Accept": "text/event-stream"}
        ) as response:
            lines = response.aiter_lines()
            await asyncio.wait_for(anext(lines), 10)  # a ping: the stream is open
    await _publish(browser_gateway, "after.disconnect")  # wakes the abandoned streams
    await asyncio.sleep(0.6)  # a few ping intervals on the closed connections
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    assert (await browser_gateway.get("/healthz")).status_code == 200


async def test_docs_serves_the_api_explorer_and_its_assets_from_the_gateway(
    browser_gateway: httpx.AsyncClient,
) -> None:
    redirect = await browser_gateway.get("/docs")
    assert redirect.status_code == 308
    assert redirect.headers["location"] == "/docs/"
    page = await browser_gateway.get("/docs/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "://" not in page.text  # nothing from another host: works offline
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "init.js"):
        assert f'"assets/{asset}"' in page.text
        response = await browser_gateway.get(f"/docs/assets/{asset}")
        assert response.status_code == 200, asset
        assert len(response.content) > 100
    init = (await browser_gateway.get("/docs/assets/init.js")).text
    assert "openapi.json" in init
    assert (await browser_gateway.get("/docs/assets/nothing.js")).status_code == 404
    assert (await browser_gateway.post("/docs/")).status_code in (404, 405)


def test_the_gateway_config_defaults_to_a_15_second_ping() -> None:
    assert GatewayConfig.from_env({}).sse_ping_s == 15.0
    assert replace(GatewayConfig(), sse_ping_s=0).sse_ping_s == 0
