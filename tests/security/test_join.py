"""Domains join with a token: proof of possession by CSR, a certificate naming them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from gateway.server import Gateway, build_app
from grace.guardian.v1 import guardian_pb2, guardian_pb2_grpc
from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.channels import ClientSecurity, channel
from services.common.config import SecurityConfig
from services.common.errors import Unauthenticated
from services.common.pki import (
    CertificateVerifier,
    bound_signing_key,
    csr_pem,
    generate_key,
    prove_signing_key,
)
from services.common.signing import SigningKey, load_or_create_key
from services.guardian.config import GuardianConfig
from services.guardian.server import GuardianServer
from services.registry.server import RegistryServer
from services.sdk.join import JoinSettings, due, join
from tests.gateway.conftest import gateway_config
from tests.guardian.conftest import component, topology
from tests.registry.conftest import registry_config
from tests.support import free_ports, server_config, serving, session_pki


class Sink:
    async def publish(self, events: object) -> None:
        """Guardian's events are not under test here."""


@dataclass
class Platform:
    gateway_url: str
    guardian: str
    registry: str


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Platform]:
    (port,) = free_ports(1)
    guardian_config = GuardianConfig(
        server=server_config("guardian", tmp_path / "guardian"), governance=False
    )
    guardian = GuardianServer(
        guardian_config, topology({"alpha": component("alpha", port)}), publisher=Sink()
    )
    registry = RegistryServer(registry_config(tmp_path))
    async with contextlib.AsyncExitStack() as stack:
        g, _ = await stack.enter_async_context(serving(guardian_config.server, guardian))
        r, _ = await stack.enter_async_context(serving(registry.config.server, registry))
        config = gateway_config(
            {
                "GRACE_GUARDIAN_ADDR": g.address,
                "GRACE_REGISTRY_ADDR": r.address,
                "GRACE_GATEWAY_GOVERNANCE": "off",
            },
            security=session_pki().security(),
        )
        gateway = await stack.enter_async_context(Gateway(config, build_app(config)))
        yield Platform(gateway.url, g.address, r.address)


def domain_files(tmp_path: Path) -> SecurityConfig:
    pki = session_pki()
    return SecurityConfig(
        ca_file=pki.ca_file,
        cert_file=tmp_path / "ai_domain" / "tls.crt",
        key_file=tmp_path / "ai_domain" / "tls.key",
        tokens_file=pki.tokens_file,
    )


async def test_a_join_token_buys_a_certificate_that_acts_as_that_domain_only(
    platform: Platform, tmp_path: Path
) -> None:
    pki = session_pki()
    files = domain_files(tmp_path)
    token = pki.token("domain:ai_domain", "domain:ai_domain")
    assert due(files)
    spiffe_id = await join(JoinSettings(token, platform.gateway_url, files))
    assert spiffe_id == "spiffe://grace.local/domain/ai_domain"
    assert not due(files)
    issued = CertificateVerifier(pki.ca_file.read_bytes()).verify_pem(files.cert_file.read_bytes())
    assert issued.principal == "domain:ai_domain"
    assert oct(files.key_file.stat().st_mode & 0o777) == "0o600"

    # With its certificate alone (no token), the domain is domain:ai_domain.
    as_domain = ClientSecurity(files.ca_file, files.cert_file, files.key_file)
    async with channel(platform.registry, security=as_domain) as chan:
        stub = registry_pb2_grpc.RegistryServiceStub(chan)
        await stub.RegisterDomain(
            registry_pb2.RegisterDomainRequest(domain_id="ai_domain", host="127.0.0.1", port=8202)
        )
        with pytest.raises(grpc.aio.AioRpcError) as other:
            await stub.RegisterDomain(
                registry_pb2.RegisterDomainRequest(
                    domain_id="data_domain", host="127.0.0.1", port=8200
                )
            )
        assert other.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # Renewal: the current certificate is enough to get the next one, over gRPC.
    async with channel(platform.guardian, security=as_domain) as chan:
        renewed = await guardian_pb2_grpc.GuardianServiceStub(chan).JoinDomain(
            guardian_pb2.JoinDomainRequest(csr_pem=csr_pem(generate_key()).decode())
        )
    assert renewed.spiffe_id == "spiffe://grace.local/domain/ai_domain"


async def test_only_a_join_token_or_a_domain_certificate_may_join(
    platform: Platform, tmp_path: Path
) -> None:
    pki = session_pki()
    files = domain_files(tmp_path)
    for token in (pki.token("rita", "reader"), "grace_made-up"):
        with pytest.raises(Unauthenticated):
            await join(JoinSettings(token, platform.gateway_url, files))
    assert not files.cert_file.exists()
    async with pki.channel_as(platform.guardian, "olga", "operator") as chan:
        with pytest.raises(grpc.aio.AioRpcError) as operator:
            await guardian_pb2_grpc.GuardianServiceStub(chan).JoinDomain(
                guardian_pb2.JoinDomainRequest(csr_pem=csr_pem(generate_key()).decode())
            )
    assert operator.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with pki.channel_as(platform.guardian, "domain:ai_domain", "domain:ai_domain") as chan:
        with pytest.raises(grpc.aio.AioRpcError) as garbage:
            await guardian_pb2_grpc.GuardianServiceStub(chan).JoinDomain(
                guardian_pb2.JoinDomainRequest(csr_pem="not a csr")
            )
    assert garbage.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "csr_pem" in (garbage.value.details() or "")


async def test_a_domain_joins_through_an_address_the_gateway_certificate_does_not_name(
    platform: Platform, tmp_path: Path
) -> None:
    # Grace's certificates name grace.local, localhost and loopback addresses, never the
    # address another host reaches the gateway at; `127.1` (127.0.0.1 written short)
    # stands for such an address: it reaches the gateway and no certificate names it.
    url = platform.gateway_url.replace("127.0.0.1", "127.1")
    assert url != platform.gateway_url
    files = domain_files(tmp_path)
    token = session_pki().token("domain:ai_domain", "domain:ai_domain")
    assert await join(JoinSettings(token, url, files)) == "spiffe://grace.local/domain/ai_domain"


async def test_a_joining_domain_gets_its_signing_key_bound_and_keeps_it_at_renewal(
    platform: Platform, tmp_path: Path
) -> None:
    pki = session_pki()
    files = domain_files(tmp_path)
    key_file = tmp_path / "ai_domain.key"
    token = pki.token("domain:ai_domain", "domain:ai_domain")
    await join(JoinSettings(token, platform.gateway_url, files, key_file))
    signer = load_or_create_key(key_file)

    def bound() -> bytes | None:
        return bound_signing_key(x509.load_pem_x509_certificate(files.cert_file.read_bytes()))

    assert bound() == signer.public_key
    await join(JoinSettings(token, platform.gateway_url, files, key_file))
    assert bound() == signer.public_key
    as_domain = ClientSecurity(files.ca_file, files.cert_file, files.key_file)
    async with channel(platform.guardian, security=as_domain) as chan:
        stub = guardian_pb2_grpc.GuardianServiceStub(chan)
        # Renewing with the current certificate and no key carries the binding forward.
        renewed = await stub.JoinDomain(
            guardian_pb2.JoinDomainRequest(csr_pem=csr_pem(generate_key()).decode())
        )
        assert (
            bound_signing_key(x509.load_pem_x509_certificate(renewed.certificate_pem.encode()))
            == signer.public_key
        )
        # A key whose possession is not proven is not bound.
        request = csr_pem(generate_key())
        with pytest.raises(grpc.aio.AioRpcError) as unproven:
            await stub.JoinDomain(
                guardian_pb2.JoinDomainRequest(
                    csr_pem=request.decode(),
                    signing_public_key=SigningKey.generate().public_key,
                    signing_key_signature=prove_signing_key(signer, request),
                )
            )
    assert unproven.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "signing_key_signature" in (unproven.value.details() or "")
