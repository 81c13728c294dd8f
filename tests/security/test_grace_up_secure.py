"""A fresh `grace up --with-examples` is secure with no extra step."""

from __future__ import annotations

import asyncio
import base64
import ssl
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from services.common.pki import bound_signing_key, certificate_identity
from services.common.tokens import TokenStore, tokens_file
from tests.grace_up import EXAMPLES, PROJECT_ROOT, RunningGrace, running_grace
from tests.support import own_pki_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
async def grace(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGrace]:
    async with running_grace(tmp_path_factory.mktemp("secure-up")) as platform:
        yield platform


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_the_ca_keys_and_the_admin_token_are_private(grace: RunningGrace) -> None:
    data = grace.data_dir
    assert mode(data) == 0o700
    assert mode(data / "pki" / "ca.key") == 0o600
    assert mode(data / "admin.token") == 0o600
    assert mode(data / "pki" / "tokens.json") == 0o600
    assert mode(data / "pki" / "component" / "registry.key") == 0o600
    token = (data / "admin.token").read_text().strip()
    assert token not in (data / "pki" / "tokens.json").read_text()
    assert token not in (data / "logs" / "guardian.log").read_text()


async def test_the_example_domains_joined_with_tokens_guardian_issued(grace: RunningGrace) -> None:
    records = TokenStore(tokens_file(grace.data_dir)).list()
    joins = {r.principal: r.roles for r in records if r.principal.startswith("join:")}
    # The example domains that join as domains (governance_domain asks governance's
    # Evaluate, which only components may call, so it runs as a component).
    examples = sorted(
        c.name for c in grace.components if c.group == EXAMPLES and c.identity == "domain"
    )
    assert sorted(joins) == [f"join:{name}" for name in examples]
    for name in examples:
        cert = x509.load_pem_x509_certificate(
            (grace.data_dir / "pki" / "domain" / f"{name}.crt").read_bytes()
        )
        assert certificate_identity(cert).principal == f"domain:{name}"
        log = (grace.data_dir / "logs" / f"{name}.log").read_text()
        assert f"joined Grace as spiffe://grace.local/domain/{name}" in log


async def test_anonymous_http_reaches_health_only(grace: RunningGrace) -> None:
    assert grace.security is not None
    verify = ssl.create_default_context(cafile=str(grace.security.ca_file))
    async with httpx.AsyncClient(base_url=grace.gateway_url, verify=verify, timeout=30) as http:
        assert (await http.get("/healthz")).status_code == 200
        refused = await http.post(
            "/domains/register", json={"domain_id": "ai_domain", "host": "127.0.0.1", "port": 1}
        )
        assert refused.status_code == 401
        assert (await http.get("/domains/list")).status_code == 401
    async with grace.http() as http:
        hijack = await http.post(
            "/domains/register", json={"domain_id": "ai_domain", "host": "127.0.0.1", "port": 1}
        )
        assert hijack.status_code == 403


def test_the_cli_finds_the_credential_by_itself(grace: RunningGrace) -> None:
    status = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "status",
            "--guardian",
            grace.addresses["guardian"],
            "--data-dir",
            str(grace.data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROJECT_ROOT,
        env=own_pki_env(),
        check=False,
    )
    assert "SERVING" in status.stdout, status.stderr


async def test_the_trust_kernel_holds_the_signing_keys_the_certificates_bind(
    grace: RunningGrace,
) -> None:
    pki = grace.data_dir / "pki"
    bound = {}
    for kind in ("component", "domain"):
        for path in sorted((pki / kind).glob("*.crt")):
            key = bound_signing_key(x509.load_pem_x509_certificate(path.read_bytes()))
            assert key is not None, f"{path.name} binds no signing key"
            bound[path.stem] = key
    # The components that publish, and a joined example domain, registered that very key.
    expected = ("orchestrator", "registry", "guardian", "ai_domain")
    async with grace.http() as http:
        for name in expected:
            for _ in range(100):
                answer = await http.get(f"/kernels/trust/identities/{name}")
                if answer.status_code == 200:
                    break
                await asyncio.sleep(0.2)
            assert answer.status_code == 200, (name, answer.text)
            current = answer.json()["identity"]["current_key"]["public_key"]
            assert base64.b64decode(current) == bound[name], name
    for log in (grace.data_dir / "logs").glob("*.log"):
        assert "the trust kernel refused" not in log.read_text(), log.name
