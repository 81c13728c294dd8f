"""Certificates renewed while calls flow: no call fails, new handshakes get the new ones."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
from dataclasses import replace
from pathlib import Path

from cryptography import x509

from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.channels import ClientSecurity, channel
from services.common.config import SecurityConfig
from services.common.pki import SERVER_NAME, Identity, leaf_files
from services.registry.server import RegistryServer
from tests.registry.conftest import registry_config
from tests.support import serving, session_pki


def served_serial(address: str, client: ClientSecurity) -> int:
    """The serial number of the certificate the server presents to a new handshake."""
    assert client.cert_file is not None
    assert client.key_file is not None
    context = ssl.create_default_context(cafile=str(client.ca_file))
    context.load_cert_chain(client.cert_file, client.key_file)
    host, _, port = address.rpartition(":")
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def test_renewing_server_and_client_certificates_fails_no_call(tmp_path: Path) -> None:
    pki = session_pki()
    short = datetime.timedelta(hours=1)
    server_files = leaf_files(tmp_path / "pki", Identity("component", "registry"))
    client_files = leaf_files(tmp_path / "pki", Identity("component", "orchestrator"))
    pki.ca.issue_files(Identity("component", "registry"), server_files, short)
    pki.ca.issue_files(Identity("component", "orchestrator"), client_files, short)
    config = registry_config(tmp_path)
    security = SecurityConfig(
        ca_file=pki.ca_file,
        cert_file=server_files.cert,
        key_file=server_files.key,
        tokens_file=pki.tokens_file,
    )
    config = replace(config, server=replace(config.server, security=security))
    client = ClientSecurity(pki.ca_file, client_files.cert, client_files.key)
    service = RegistryServer(config)
    async with serving(config.server, service) as (server, _):
        failures: list[BaseException] = []
        calls = 0
        stop = asyncio.Event()

        async def call_forever(chan_per_call: bool) -> None:
            nonlocal calls
            long_lived = channel(server.address, security=client)
            try:
                while not stop.is_set():
                    chan = channel(server.address, security=client) if chan_per_call else long_lived
                    try:
                        stub = registry_pb2_grpc.RegistryServiceStub(chan)
                        await stub.ListDomains(registry_pb2.ListDomainsRequest(), timeout=10)
                        calls += 1
                    except Exception as exc:  # every failure is the test's finding
                        failures.append(exc)
                    finally:
                        if chan_per_call:
                            await chan.close()
            finally:
                await long_lived.close()

        callers = [
            asyncio.create_task(call_forever(chan_per_call=flag)) for flag in (True, False, True)
        ]
        serials = {served_serial(server.address, client)}
        for _ in range(5):
            await asyncio.sleep(0.3)
            pki.ca.issue_files(Identity("component", "registry"), server_files, short)
            pki.ca.issue_files(Identity("component", "orchestrator"), client_files, short)
            serials.add(await asyncio.to_thread(served_serial, server.address, client))
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*callers)
    assert failures == []
    assert calls > 10
    # Every renewal was served to the next handshake, without a restart.
    assert len(serials) == 6
