"""Guardian's CA binds each workload's event-signing key to its certificate."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509

from services.common.access import Principal
from services.common.auth import CallerCertificate
from services.common.components import component_key_path
from services.common.config import SecurityConfig
from services.common.pki import (
    Identity,
    bound_signing_key,
    csr_pem,
    generate_key,
    prove_signing_key,
)
from services.common.signing import SigningKey, load_or_create_key
from services.guardian.credentials import Credentials


def credentials(data_dir: Path) -> Credentials:
    pki = data_dir / "pki"
    return Credentials(
        data_dir,
        SecurityConfig(
            ca_file=pki / "ca.crt",
            cert_file=pki / "component" / "guardian.crt",
            key_file=pki / "component" / "guardian.key",
            tokens_file=pki / "tokens.json",
        ),
        datetime.timedelta(hours=3),
    )


def bound_in(path: Path) -> bytes | None:
    return bound_signing_key(x509.load_pem_x509_certificate(path.read_bytes()))


def test_a_component_certificate_binds_the_signing_key_guardian_provisions_for_it(
    tmp_path: Path,
) -> None:
    issuer = credentials(tmp_path)
    files = issuer.ensure(Identity("component", "registry"))
    provisioned = load_or_create_key(component_key_path(tmp_path, "registry"))
    assert bound_in(files.cert) == provisioned.public_key
    # Re-issuing (as renewal does) carries the same key forward.
    before = files.cert.read_bytes()
    files.cert.unlink()
    issuer.ensure(Identity("component", "registry"))
    assert files.cert.read_bytes() != before
    assert bound_in(files.cert) == provisioned.public_key
    # The CLI's certificate opens connections only: it binds no key.
    issuer.prepare()
    assert bound_in(tmp_path / "pki" / "client" / "cli.crt") is None
    assert bound_in(tmp_path / "pki" / "component" / "guardian.crt") == (
        load_or_create_key(component_key_path(tmp_path, "guardian")).public_key
    )


def test_a_joining_domain_binds_its_signing_key_and_renewal_carries_it_forward(
    tmp_path: Path,
) -> None:
    issuer = credentials(tmp_path)
    token = Principal("join:ai_domain", frozenset({"domain:ai_domain"}))
    signer = SigningKey.generate()
    request = csr_pem(generate_key())
    joined = issuer.join(token, request, signer.public_key, prove_signing_key(signer, request))
    assert bound_signing_key(joined) == signer.public_key
    # Renewal with the current certificate and no key: the binding carries forward.
    presented = CallerCertificate(Identity("domain", "ai_domain"), signer.public_key)
    certificate = Principal("domain:ai_domain", frozenset({"domain:ai_domain"}), "certificate")
    renewed = issuer.join(certificate, csr_pem(generate_key()), presented=presented)
    assert bound_signing_key(renewed) == signer.public_key
    # Another domain's certificate carries nothing over to this one.
    elsewhere = CallerCertificate(Identity("domain", "data_domain"), signer.public_key)
    assert (
        bound_signing_key(issuer.join(token, csr_pem(generate_key()), presented=elsewhere)) is None
    )


def test_issuing_ahead_gives_the_spawn_the_files_it_would_have_issued_and_a_joining_domain_none(
    tmp_path: Path,
) -> None:
    issuer = credentials(tmp_path)
    issuer.issue_ahead("registry", "component")
    cert = tmp_path / "pki" / "component" / "registry.crt"
    issued = cert.read_bytes()
    env = issuer.child_env("registry", "component")
    assert env["GRACE_TLS_CERT"] == str(cert)
    assert cert.read_bytes() == issued  # the spawn reuses it: nothing issued twice
    assert bound_in(cert) == load_or_create_key(component_key_path(tmp_path, "registry")).public_key
    # A domain that joins through the gateway fetches its own certificate: none ahead.
    issuer.issue_ahead("data", "domain", "127.0.0.1:8000")
    assert not (tmp_path / "pki" / "domain" / "data.crt").exists()
    assert not component_key_path(tmp_path, "data").exists()
