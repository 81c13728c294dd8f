"""Grace's certificate authority and workload identities (X.509-SVIDs).

One CA per Grace installation lives under `<data dir>/pki/` (`ca.key` mode 0600, `ca.crt`
the bundle users copy). Every component and every joined domain holds a short-lived leaf
certificate whose one URI SAN names it, SPIFFE style:

    spiffe://grace.local/component/registry
    spiffe://grace.local/domain/ai_domain
    spiffe://grace.local/client/cli        (people's tools: opens a connection, no authority)

Leaves are ECDSA P-256, usable for both TLS server and client authentication, and are
renewed at two thirds of their lifetime (`needs_renewal`). Besides the URI SAN they carry
the DNS names `grace.local` and `localhost` and the loopback addresses, so that Grace
clients (which check the name `grace.local`) and curl or grpcurl on the same host
(which check the address they dial) accept them.

A component's or domain's certificate also binds its Ed25519 event-signing key (the key
the trust kernel knows it by): the subject's `serialNumber` attribute (2.5.4.5) is the raw
key in hex (`SIGNING_KEY_ATTRIBUTE`). A standard attribute rather than a private
extension: an extension needs an OID of our own, and the registration-free
`2.25.<UUID>` arcs do not fit Go's X.509 parser (arcs above 2^31), which would make
grpcurl and every Go client refuse Grace's certificates. The CA puts the key there only
after proof of possession: it provisions components' keys itself, and a joining domain
signs the CSR's public key with its signing key (`prove_signing_key`). TLS ignores the
attribute; the trust kernel reads it (`bound_signing_key`) to accept only that key for
the certificate's identity.

Everything here is plain Python over `cryptography`: no gRPC, no I/O beyond the files
named, and an injectable clock.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from services.common import dsse, signing

TRUST_DOMAIN = "grace.local"
# The name every Grace client checks in a server's certificate (ssl_target_name_override).
SERVER_NAME = "grace.local"
DEFAULT_LEAF_LIFETIME = datetime.timedelta(hours=24)
CA_LIFETIME = datetime.timedelta(days=3650)
RENEW_AT_FRACTION = 2 / 3
KINDS = ("component", "domain", "client")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_LOOPBACK = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
# The subject attribute binding a workload's Ed25519 event-signing key to its certificate:
# its 32 raw bytes in hex, 64 characters, the attribute's upper bound (see the module).
SIGNING_KEY_ATTRIBUTE = NameOID.SERIAL_NUMBER
# What a joining domain's signing key signs (DSSE PAE over the CSR's public key, DER
# SubjectPublicKeyInfo), so the signature cannot be replayed as any other statement.
SIGNING_KEY_BINDING = "application/vnd.grace.pki.signing-key-binding.v1"

Clock = Callable[[], datetime.datetime]


def utcnow() -> datetime.datetime:
    """The current time, timezone-aware UTC."""
    return datetime.datetime.now(datetime.UTC)


class PkiError(ValueError):
    """A certificate, key or identity is malformed, untrusted or expired."""


@dataclass(frozen=True)
class Identity:
    """A workload identity: a component or a domain, named.

    Attributes:
        kind: "component", "domain" or "client".
        name: The component name or domain id.
    """

    kind: str
    name: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PkiError(f"identity kind {self.kind!r}: expected one of {', '.join(KINDS)}")
        if not _NAME.match(self.name):
            raise PkiError(
                f"identity name {self.name!r}: expected letters, digits, '.', '_' or '-' "
                "(at most 128, starting with a letter or digit)"
            )

    @property
    def spiffe_id(self) -> str:
        """`spiffe://grace.local/<kind>/<name>`."""
        return f"spiffe://{TRUST_DOMAIN}/{self.kind}/{self.name}"

    @property
    def principal(self) -> str:
        """The principal name used in authorization: `<kind>:<name>`."""
        return f"{self.kind}:{self.name}"

    @classmethod
    def from_spiffe_id(cls, uri: str) -> Identity:
        """Parses a Grace SPIFFE ID; raises PkiError for any other URI."""
        prefix = f"spiffe://{TRUST_DOMAIN}/"
        if not uri.startswith(prefix):
            raise PkiError(f"URI SAN {uri!r}: not in the trust domain {TRUST_DOMAIN}")
        parts = uri[len(prefix) :].split("/")
        if len(parts) != 2:
            raise PkiError(f"URI SAN {uri!r}: expected spiffe://{TRUST_DOMAIN}/<kind>/<name>")
        return cls(parts[0], parts[1])


def write_private(path: Path, data: bytes) -> None:
    """Writes `data` to `path` atomically, readable by the owner only (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


@dataclass(frozen=True)
class LeafFiles:
    """Where a workload's certificate, key and CA bundle are.

    Attributes:
        cert: PEM leaf certificate.
        key: PEM private key (0600).
        ca: PEM bundle of the Grace CA.
    """

    cert: Path
    key: Path
    ca: Path

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(certificate, key, CA bundle) as PEM bytes."""
        return self.cert.read_bytes(), self.key.read_bytes(), self.ca.read_bytes()


def pki_dir(data_dir: Path) -> Path:
    """`<data dir>/pki`."""
    return data_dir / "pki"


def leaf_files(directory: Path, identity: Identity) -> LeafFiles:
    """The conventional paths of `identity`'s files under a PKI directory."""
    base = directory / identity.kind
    return LeafFiles(
        base / f"{identity.name}.crt", base / f"{identity.name}.key", directory / "ca.crt"
    )


class CertificateAuthority:
    """The Grace CA: issues leaf certificates for workload identities.

    Args:
        key: The CA's private key.
        certificate: The CA's self-signed certificate.
        clock: Returns the current UTC time.
    """

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey,
        certificate: x509.Certificate,
        clock: Clock = utcnow,
    ) -> None:
        self._key = key
        self.certificate = certificate
        self._clock = clock

    @property
    def bundle_pem(self) -> bytes:
        """The CA certificate, PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def create(cls, clock: Clock = utcnow) -> CertificateAuthority:
        """A new CA with a fresh key."""
        key = generate_key()
        now = clock()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Grace"),
                x509.NameAttribute(NameOID.COMMON_NAME, "Grace CA"),
            ]
        )
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert, clock)

    @classmethod
    def load_or_create(cls, directory: Path, clock: Clock = utcnow) -> CertificateAuthority:
        """The CA stored in `directory` (`ca.key`, `ca.crt`), created there on first use.

        The directory is made 0700 and the key 0600.
        """
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        directory.chmod(0o700)
        key_path, cert_path = directory / "ca.key", directory / "ca.crt"
        if key_path.exists() and cert_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise PkiError(f"{key_path}: expected an ECDSA private key")
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            return cls(key, cert, clock)
        ca = cls.create(clock)
        write_private(key_path, _private_key_pem(ca._key))
        write_private(cert_path, ca.bundle_pem)
        cert_path.chmod(0o644)
        return ca

    def issue(
        self,
        identity: Identity,
        public_key: ec.EllipticCurvePublicKey,
        lifetime: datetime.timedelta = DEFAULT_LEAF_LIFETIME,
        signing_key: bytes | None = None,
    ) -> x509.Certificate:
        """A leaf certificate binding `public_key` to `identity` for `lifetime`.

        Args:
            signing_key: The raw Ed25519 event-signing key of `identity`, bound in the
                `SIGNING_KEY_ATTRIBUTE`; the caller has checked its possession.
        """
        if lifetime <= datetime.timedelta(0) or lifetime > datetime.timedelta(days=366):
            raise PkiError("certificate lifetime: must be positive and at most 366 days")
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise PkiError("public key: expected an ECDSA key")
        now = self._clock()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_subject(identity, signing_key))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + lifetime)
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.UniformResourceIdentifier(identity.spiffe_id),
                        x509.DNSName(SERVER_NAME),
                        x509.DNSName("localhost"),
                        *(x509.IPAddress(address) for address in _LOOPBACK),
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        return builder.sign(self._key, hashes.SHA256())

    def sign_request(
        self,
        csr_pem: bytes,
        identity: Identity,
        lifetime: datetime.timedelta = DEFAULT_LEAF_LIFETIME,
        signing_key: bytes | None = None,
        signing_key_proof: bytes = b"",
    ) -> x509.Certificate:
        """Issues a certificate for a CSR whose signature proves possession of its key.

        The CSR's own names are ignored: the identity comes from the caller's credential
        (a join token), never from what the requester asked for.

        Args:
            signing_key: The requester's raw Ed25519 event-signing key, to bind in the
                certificate; None binds none.
            signing_key_proof: `prove_signing_key`'s signature by `signing_key` over the
                CSR's public key: proof that the requester holds both keys.
        """
        public = csr_public_key(csr_pem)
        if signing_key is not None:
            check_signing_key_proof(public, signing_key, signing_key_proof)
        return self.issue(identity, public, lifetime, signing_key)

    def issue_files(
        self,
        identity: Identity,
        files: LeafFiles,
        lifetime: datetime.timedelta = DEFAULT_LEAF_LIFETIME,
        signing_key: bytes | None = None,
    ) -> x509.Certificate:
        """Generates a key, issues its certificate and writes both (key 0600) and the bundle.

        The key is written before the certificate, so a reader that sees the new
        certificate also finds its key. `signing_key` is bound as in `issue`.
        """
        key = generate_key()
        cert = self.issue(identity, key.public_key(), lifetime, signing_key)
        write_private(files.key, _private_key_pem(key))
        write_private(files.cert, cert.public_bytes(serialization.Encoding.PEM))
        if not files.ca.exists() or files.ca.read_bytes() != self.bundle_pem:
            write_private(files.ca, self.bundle_pem)
            files.ca.chmod(0o644)
        return cert


def needs_renewal(
    cert_pem: bytes, now: datetime.datetime, fraction: float = RENEW_AT_FRACTION
) -> bool:
    """True once `fraction` of the certificate's lifetime has passed (or it is unreadable)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        return True
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return now >= start + (end - start) * fraction


def certificate_identity(cert: x509.Certificate) -> Identity:
    """The Grace identity named by the one URI SAN of `cert`."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise PkiError("certificate has no subject alternative name") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise PkiError(f"certificate has {len(uris)} URI SANs: an X.509-SVID has exactly one")
    return Identity.from_spiffe_id(uris[0])


class CertificateVerifier:
    """Verifies leaf certificates against the Grace CA bundle and names their identity.

    Verification uses `cryptography`'s path validation (signature, validity period, basic
    constraints, key usage). Results are cached by the certificate's
    digest until the certificate expires, so a connection's calls cost one lookup.

    Args:
        bundle_pem: PEM of the trusted CA certificate(s).
        clock: Returns the current UTC time.
    """

    _CACHE_LIMIT = 4096

    def __init__(self, bundle_pem: bytes, clock: Clock = utcnow) -> None:
        roots = x509.load_pem_x509_certificates(bundle_pem)
        if not roots:
            raise PkiError("CA bundle: no certificate in it")
        self._store = Store(roots)
        self._clock = clock
        self._cache: dict[bytes, tuple[Identity, datetime.datetime]] = {}
        self._lock = threading.Lock()

    def verify_pem(self, cert_pem: bytes, intermediates: Sequence[bytes] = ()) -> Identity:
        """The identity of a PEM leaf; raises PkiError when it does not verify."""
        digest = hashlib.sha256(cert_pem).digest()
        now = self._clock()
        with self._lock:
            cached = self._cache.get(digest)
        if cached is not None and now < cached[1]:
            return cached[0]
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError:
            raise PkiError("peer certificate: not PEM") from None
        identity = self.verify(cert, [x509.load_pem_x509_certificate(i) for i in intermediates])
        with self._lock:
            if len(self._cache) >= self._CACHE_LIMIT:
                self._cache.clear()
            self._cache[digest] = (identity, cert.not_valid_after_utc)
        return identity

    def verify(
        self, cert: x509.Certificate, intermediates: Sequence[x509.Certificate] = ()
    ) -> Identity:
        """The identity of a leaf; raises PkiError when it does not chain to the CA."""
        verifier = PolicyBuilder().store(self._store).time(self._clock()).build_client_verifier()
        try:
            verifier.verify(cert, list(intermediates))
        except VerificationError as exc:
            raise PkiError(f"certificate does not verify against the Grace CA: {exc}") from None
        return certificate_identity(cert)


def csr_public_key(csr_pem: bytes) -> ec.EllipticCurvePublicKey:
    """The public key of a PEM CSR whose signature proves possession of it.

    Raises:
        PkiError: not a CSR, its signature does not verify, or not an ECDSA key.
    """
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise PkiError(f"csr: not a PEM certificate signing request ({exc})") from None
    if not csr.is_signature_valid:
        raise PkiError("csr: its signature does not verify with its own public key")
    public = csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise PkiError("csr: expected an ECDSA P-256 public key")
    return public


def _subject(identity: Identity, signing_key: bytes | None) -> x509.Name:
    attributes = [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Grace"),
        x509.NameAttribute(NameOID.COMMON_NAME, identity.principal),
    ]
    if signing_key is not None:
        if len(signing_key) != signing.PUBLIC_KEY_BYTES:
            raise PkiError("signing key: expected a raw 32-byte Ed25519 public key")
        attributes.append(x509.NameAttribute(SIGNING_KEY_ATTRIBUTE, signing_key.hex()))
    return x509.Name(attributes)


def bound_signing_key(cert: x509.Certificate) -> bytes | None:
    """The raw Ed25519 event-signing key bound in `cert` (`SIGNING_KEY_ATTRIBUTE`), or None.

    Raises:
        PkiError: the attribute is there but holds no Ed25519 key.
    """
    values = cert.subject.get_attributes_for_oid(SIGNING_KEY_ATTRIBUTE)
    if not values:
        return None
    if len(values) > 1:
        raise PkiError("signing key attribute: more than one")
    try:
        raw = bytes.fromhex(str(values[0].value))
        if len(raw) != signing.PUBLIC_KEY_BYTES:
            raise ValueError("not 32 bytes")
        dsse.load_public_key(raw)
    except ValueError:
        raise PkiError("signing key attribute: not the hex of an Ed25519 public key") from None
    return raw


def _binding_message(tls_public_key: ec.EllipticCurvePublicKey) -> bytes:
    der = tls_public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return dsse.pae(SIGNING_KEY_BINDING, der)


def prove_signing_key(key: signing.SigningKey, csr: bytes) -> bytes:
    """The signature by `key` (Ed25519) over the public key of the PEM CSR `csr`: with
    the CSR's own signature, proof that the requester holds both keys."""
    return key.sign(_binding_message(csr_public_key(csr)))


def check_signing_key_proof(
    tls_public_key: ec.EllipticCurvePublicKey, signing_key: bytes, proof: bytes
) -> None:
    """Raises PkiError unless `proof` is `signing_key`'s signature over `tls_public_key`."""
    if len(signing_key) != signing.PUBLIC_KEY_BYTES:
        raise PkiError("signing key: expected a raw 32-byte Ed25519 public key")
    if not signing.verify(signing_key, _binding_message(tls_public_key), proof):
        raise PkiError(
            "signing key proof: not a signature by the signing key over the CSR's public key"
        )


def cert_pem(cert: x509.Certificate) -> bytes:
    """A certificate as PEM bytes."""
    return cert.public_bytes(serialization.Encoding.PEM)


def csr_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A CSR signed by `key` (proving its possession), PEM. Its subject is ignored."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "grace")]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A private key as unencrypted PKCS#8 PEM (write it with `write_private`)."""
    return _private_key_pem(key)


def attest(cert: bytes, key: bytes, message: bytes) -> bytes:
    """Signs `message` (ECDSA P-256, SHA-256, DER) with the key of a Grace certificate."""
    private = serialization.load_pem_private_key(key, password=None)
    if not isinstance(private, ec.EllipticCurvePrivateKey):
        raise PkiError("attestation key: expected an ECDSA private key")
    if x509.load_pem_x509_certificate(cert).public_key() != private.public_key():
        raise PkiError("attestation key: it is not the key of the certificate")
    return private.sign(message, ec.ECDSA(hashes.SHA256()))


def check_attestation(
    bundle_pem: bytes, cert: bytes, message: bytes, signature: bytes, expected: Identity
) -> bytes | None:
    """Raises PkiError unless `cert` was issued by a CA of the bundle, names `expected`, and
    its key signed `message`. Returns the Ed25519 signing key the certificate binds (None
    when it binds none), for the caller to compare with the key it verifies.

    The certificate's validity period is not held against it: it was checked when the
    signature was made, and attestations (proofs) are verified long after short-lived
    certificates expire.
    """
    try:
        leaf = x509.load_pem_x509_certificate(cert)
    except ValueError:
        raise PkiError("signer certificate: not PEM") from None
    roots = x509.load_pem_x509_certificates(bundle_pem)
    for root in roots:
        try:
            leaf.verify_directly_issued_by(root)
            break
        except (ValueError, TypeError, InvalidSignature):
            continue
    else:
        raise PkiError("signer certificate: not issued by the Grace CA in the bundle")
    identity = certificate_identity(leaf)
    if identity != expected:
        raise PkiError(f"signer certificate names {identity.spiffe_id}, not {expected.spiffe_id}")
    public = leaf.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise PkiError("signer certificate: expected an ECDSA key")
    try:
        public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise PkiError("the certificate's key did not sign this proof") from None
    return bound_signing_key(leaf)
