"""A stream that ends because its client left, or because the gateway stops, is a normal
end: no traceback in the log."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from gateway.server import Gateway, build_app
from tests.gateway.conftest import Stack, gateway_config


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_client_leaving_a_stream_logs_no_error(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(3):
        async with stack.http.stream("GET", "/domains/watch") as response:
            await anext(response.aiter_lines())
    for _ in range(200):
        if not stack.gateway.app.streams._calls:
            break
        await asyncio.sleep(0.05)
    assert not stack.gateway.app.streams._calls
    await asyncio.sleep(0.2)
    assert errors(caplog) == []


async def test_a_stream_open_when_the_gateway_stops_ends_with_an_in_band_503_and_no_error(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    config = gateway_config({"GRACE_REGISTRY_ADDR": stack.registry_address})
    gateway = Gateway(config, build_app(config))
    await gateway.start()
    try:
        async with (
            httpx.AsyncClient(base_url=gateway.url, timeout=30) as http,
            http.stream("GET", "/domains/watch") as response,
        ):
            lines = response.aiter_lines()
            await anext(lines)
            stopping = asyncio.create_task(gateway.stop())
            rest = [line async for line in lines]
            await stopping
    finally:
        if not stopping.done():
            await stopping
    assert '"UNAVAILABLE"' in rest[-1]
    assert errors(caplog) == []
