"""The gateway in secure mode: HTTPS, bearer tokens, the access table, no trusted X-Actor."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.server import Gateway, build_app
from grace.kernels.governance.v1 import governance_pb2 as gov
from grace.kernels.governance.v1 import governance_pb2_grpc
from services.kernels.governance.config import GovernanceConfig
from services.kernels.governance.governance import GovernanceSettings
from services.kernels.governance.model import Mode
from services.kernels.governance.server import GovernanceServer
from services.registry.server import RegistryServer
from tests.gateway.conftest import gateway_config
from tests.registry.conftest import registry_config
from tests.support import server_config, serving, session_pki


class Discard:
    async def publish(self, events: object) -> None:
        """The bus and the log are not under test here."""


@dataclass
class SecureStack:
    url: str
    governance: governance_pb2_grpc.GovernanceServiceStub

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(
            base_url=self.url,
            timeout=30,
            verify=ssl.create_default_context(cafile=str(session_pki().ca_file)),
            headers=headers,
        )


@pytest.fixture
async def secure(tmp_path: Path) -> AsyncIterator[SecureStack]:
    registry = RegistryServer(registry_config(tmp_path))
    governance = GovernanceServer(
        GovernanceConfig(
            server=server_config("governance", tmp_path),
            settings=GovernanceSettings(mode=Mode.ENFORCE),
        ),
        bus=Discard(),
        immutable_log=Discard(),
    )
    async with contextlib.AsyncExitStack() as stack:
        reg, _ = await stack.enter_async_context(serving(registry.config.server, registry))
        gov_server, gov_chan = await stack.enter_async_context(
            serving(governance.config.server, governance)
        )
        config = gateway_config(
            {"GRACE_REGISTRY_ADDR": reg.address, "GRACE_GOVERNANCE_ADDR": gov_server.address},
            security=session_pki().security(),
        )
        gateway = await stack.enter_async_context(Gateway(config, build_app(config)))
        assert gateway.url.startswith("https://")
        yield SecureStack(gateway.url, governance_pb2_grpc.GovernanceServiceStub(gov_chan))


async def test_without_a_token_every_route_but_healthz_answers_401_saying_how(
    secure: SecureStack,
) -> None:
    async with secure.client() as http:
        assert (await http.get("/healthz")).status_code == 200
        for method, path in (
            ("GET", "/domains/list"),
            ("POST", "/domains/register"),
            ("GET", "/domains/system/overview"),
            ("GET", "/openapi.json"),
        ):
            answer = await http.request(method, path, json={} if method == "POST" else None)
            assert answer.status_code == 401, path
            body = answer.json()
            assert body["error"]["status"] == "UNAUTHENTICATED"
            assert "Bearer" in body["error"]["message"]
            assert answer.headers["www-authenticate"].startswith("Bearer")
    async with secure.client("grace_not-a-token") as http:
        refused = await http.get("/domains/list")
        assert refused.status_code == 401
        assert "unknown, expired or revoked" in refused.json()["error"]["message"]


async def test_a_reader_reads_but_cannot_register_or_move_domains(secure: SecureStack) -> None:
    pki = session_pki()
    async with secure.client(pki.token("rita", "reader")) as http:
        assert (await http.get("/domains/list")).status_code == 200
        hijack = await http.post(
            "/domains/register",
            json={"domain_id": "ai_domain", "host": "127.0.0.1", "port": 9999},
        )
        assert hijack.status_code == 403
        assert hijack.json()["error"]["status"] == "PERMISSION_DENIED"
    async with secure.client(pki.token("domain:ai_domain", "domain:ai_domain")) as http:
        own = await http.post(
            "/domains/register", json={"domain_id": "ai_domain", "host": "127.0.0.1", "port": 8202}
        )
        assert own.status_code == 200, own.text
    async with secure.client(pki.admin_token) as http:
        moved = await http.post(
            "/domains/register", json={"domain_id": "ai_domain", "host": "127.0.0.1", "port": 9999}
        )
        assert moved.status_code == 403
        assert "bound to domain:ai_domain" in moved.json()["error"]["message"]


async def test_governance_judges_the_authenticated_principal_not_x_actor(
    secure: SecureStack,
) -> None:
    await secure.governance.CreatePolicy(
        gov.CreatePolicyRequest(
            policy=gov.Policy(
                policy_id="no-mallory",
                description="mallory may not register domains",
                principal="mallory",
                action="POST:/domains/*",
                effect=gov.EFFECT_FORBID,
            )
        )
    )
    mallory = session_pki().token("mallory", "admin")
    async with secure.client(mallory) as http:
        disguised = await http.post(
            "/domains/register",
            json={"domain_id": "evil", "port": 9001},
            headers={"X-Actor": "alice"},
        )
    assert disguised.status_code == 403
    assert "governance denied" in disguised.json()["error"]["message"]
    assert "mallory" in disguised.json()["error"]["message"]
