"""The console at /ui: served by the gateway, complete, and loading nothing from elsewhere."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.config import GatewayConfig
from gateway.console import ASSETS
from gateway.server import Gateway, build_app
from tests.gateway.conftest import gateway_config

IMPORT = re.compile(r"""^\s*import\s[^;]*?from\s+["']([^"']+)["']""", re.MULTILINE)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    config: GatewayConfig = gateway_config({"GRACE_GATEWAY_GOVERNANCE": "off"})
    async with (
        Gateway(config, build_app(config)) as gateway,
        httpx.AsyncClient(base_url=gateway.url, timeout=30) as client,
    ):
        yield client


async def test_ui_redirects_to_the_page_which_loads_its_module_from_the_gateway(
    http: httpx.AsyncClient,
) -> None:
    redirect = await http.get("/ui")
    assert (redirect.status_code, redirect.headers["location"]) == (308, "/ui/")
    page = await http.get("/ui/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="assets/app.js">' in page.text
    assert 'id="nav-map"' in page.text


async def test_every_asset_is_served_with_a_type_a_browser_accepts(
    http: httpx.AsyncClient,
) -> None:
    kinds = {".js": "javascript", ".css": "text/css", ".html": "text/html"}
    for path in ASSETS.iterdir():
        response = await http.get(f"/ui/assets/{path.name}")
        assert response.status_code == 200, path.name
        assert kinds[path.suffix] in response.headers["content-type"], path.name
    assert (await http.get("/ui/assets/missing.js")).status_code == 404
    assert (await http.get("/ui/assets/%2E%2E/__init__.py")).status_code in (400, 404)
    assert (await http.post("/ui/")).status_code in (404, 405)


def test_every_module_import_is_a_file_of_the_console_and_nothing_comes_from_another_host() -> None:
    for path in ASSETS.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), path.name
        assert "@import" not in text, path.name
        for target in IMPORT.findall(text):
            assert target.startswith("./"), f"{path.name} imports {target}"
            assert (ASSETS / target[2:]).is_file(), f"{path.name} imports a missing {target}"
