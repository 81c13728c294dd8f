"""The Grace CA and workload certificates."""

from __future__ import annotations

import datetime
import stat
from pathlib import Path

import pytest
from cryptography import x509

from services.common.pki import (
    SIGNING_KEY_ATTRIBUTE,
    CertificateAuthority,
    CertificateVerifier,
    Identity,
    PkiError,
    bound_signing_key,
    certificate_identity,
    csr_pem,
    generate_key,
    leaf_files,
    needs_renewal,
    prove_signing_key,
)
from services.common.signing import SigningKey


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_ca_is_created_once_with_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    first = CertificateAuthority.load_or_create(tmp_path / "pki")
    again = CertificateAuthority.load_or_create(tmp_path / "pki")
    assert again.bundle_pem == first.bundle_pem
    assert mode(tmp_path / "pki" / "ca.key") == 0o600
    assert mode(tmp_path / "pki") == 0o700


def test_a_leaf_names_its_workload_in_exactly_one_spiffe_uri(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path)
    files = leaf_files(tmp_path, Identity("component", "registry"))
    cert = ca.issue_files(Identity("component", "registry"), files)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://grace.local/component/registry"
    ]
    assert certificate_identity(cert) == Identity("component", "registry")
    assert mode(files.key) == 0o600
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= datetime.timedelta(
        hours=24, minutes=1
    )


def test_a_certificate_from_another_ca_does_not_verify(tmp_path: Path) -> None:
    ours = CertificateAuthority.load_or_create(tmp_path / "ours")
    theirs = CertificateAuthority.create()
    forged = theirs.issue(Identity("component", "orchestrator"), generate_key().public_key())
    with pytest.raises(PkiError, match="does not verify"):
        CertificateVerifier(ours.bundle_pem).verify(forged)
    genuine = ours.issue(Identity("component", "orchestrator"), generate_key().public_key())
    assert CertificateVerifier(ours.bundle_pem).verify(genuine).name == "orchestrator"


def test_an_expired_certificate_does_not_verify(tmp_path: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    ca = CertificateAuthority.load_or_create(tmp_path, clock=lambda: now)
    cert = ca.issue(
        Identity("domain", "ai_domain"), generate_key().public_key(), datetime.timedelta(hours=1)
    )
    later = CertificateVerifier(ca.bundle_pem, clock=lambda: now + datetime.timedelta(hours=2))
    with pytest.raises(PkiError):
        later.verify(cert)


def test_renewal_is_due_after_two_thirds_of_the_lifetime(tmp_path: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    ca = CertificateAuthority.load_or_create(tmp_path, clock=lambda: now)
    files = leaf_files(tmp_path, Identity("component", "memory"))
    ca.issue_files(Identity("component", "memory"), files, datetime.timedelta(hours=3))
    pem = files.cert.read_bytes()
    assert not needs_renewal(pem, now + datetime.timedelta(hours=1))
    assert needs_renewal(pem, now + datetime.timedelta(hours=2, minutes=1))


def test_a_csr_proves_possession_and_the_identity_comes_from_the_caller(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path)
    key = generate_key()
    cert = ca.sign_request(csr_pem(key), Identity("domain", "ai_domain"))
    assert certificate_identity(cert).principal == "domain:ai_domain"
    assert cert.public_key() == key.public_key()
    with pytest.raises(PkiError, match="csr"):
        ca.sign_request(b"not a csr", Identity("domain", "ai_domain"))


def test_identities_outside_the_trust_domain_are_refused() -> None:
    with pytest.raises(PkiError):
        Identity.from_spiffe_id("spiffe://evil.example/component/registry")
    with pytest.raises(PkiError):
        Identity("component", "../registry")
    with pytest.raises(PkiError):
        Identity("root", "registry")


def test_a_certificate_binds_a_signing_key_in_its_subject(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path)
    signer = SigningKey.generate()
    files = leaf_files(tmp_path, Identity("component", "registry"))
    cert = ca.issue_files(Identity("component", "registry"), files, signing_key=signer.public_key)
    (attribute,) = cert.subject.get_attributes_for_oid(SIGNING_KEY_ATTRIBUTE)
    assert attribute.value == signer.public_key.hex()
    # Every arc of every OID in the certificate fits 31 bits: Go's X.509 parser (grpcurl,
    # Go clients) refuses a certificate with a larger one.
    oids = [e.oid for e in cert.extensions] + [a.oid for a in cert.subject]
    assert all(int(arc) < 2**31 for oid in oids for arc in oid.dotted_string.split("."))
    reread = x509.load_pem_x509_certificate(files.cert.read_bytes())
    assert bound_signing_key(reread) == signer.public_key
    # TLS verification ignores the attribute; a certificate without it binds nothing.
    assert CertificateVerifier(ca.bundle_pem).verify(reread).name == "registry"
    plain = ca.issue(Identity("component", "memory"), generate_key().public_key())
    assert bound_signing_key(plain) is None


def test_a_csr_binds_a_signing_key_only_with_a_proof_of_its_possession(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path)
    request = csr_pem(generate_key())
    signer, stranger = SigningKey.generate(), SigningKey.generate()
    proof = prove_signing_key(signer, request)
    cert = ca.sign_request(
        request,
        Identity("domain", "ai_domain"),
        signing_key=signer.public_key,
        signing_key_proof=proof,
    )
    assert bound_signing_key(cert) == signer.public_key
    # Someone else's key, or a proof made over another CSR, is not bound.
    with pytest.raises(PkiError, match="signing key proof"):
        ca.sign_request(
            request,
            Identity("domain", "ai_domain"),
            signing_key=stranger.public_key,
            signing_key_proof=proof,
        )
    other_csr = prove_signing_key(signer, csr_pem(generate_key()))
    with pytest.raises(PkiError, match="signing key proof"):
        ca.sign_request(
            request,
            Identity("domain", "ai_domain"),
            signing_key=signer.public_key,
            signing_key_proof=other_csr,
        )
