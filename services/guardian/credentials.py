"""Guardian as the issuer of workload identities (secure mode).

Before it starts a component, Guardian makes sure the Grace CA exists under
`<data dir>/pki/`, issues the component a short-lived certificate whose URI SAN names it
(`component:<name>`, or `domain:<id>` for a topology entry with `identity = "domain"`),
and passes the paths in the child's environment. The certificate binds the workload's
Ed25519 event-signing key (`services.common.pki.SIGNING_KEY_ATTRIBUTE`): Guardian provisions
that key itself, at `<data dir>/<name>.key` where the component (or the SDK) loads it, so
the CA holds the proof of possession. A renewal task re-issues every certificate once two
thirds of its lifetime has passed, binding the key then in that file (the same key unless
it was rotated); servers pick the new files up for new handshakes and client channels for
new connections, with no restart.

It also writes the operator's credential the `grace` CLI finds by itself: an admin token
in `<data dir>/admin.token` (0600, re-created only when missing, expired or revoked) and a
`client` certificate for tools (`pki/client/cli.crt`), which opens a mutual-TLS connection
but carries no authority without a token.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509

from services.common import signing
from services.common.access import Principal
from services.common.auth import CallerCertificate
from services.common.components import component_key_path
from services.common.config import SecurityConfig
from services.common.errors import InvalidArgument, PermissionDenied
from services.common.pki import (
    CertificateAuthority,
    Identity,
    LeafFiles,
    PkiError,
    check_signing_key_proof,
    csr_public_key,
    leaf_files,
    needs_renewal,
    utcnow,
    write_private,
)
from services.common.tokens import (
    TokenStore,
    TokenValidator,
    admin_token_file,
    token_digest,
)

log = logging.getLogger(__name__)

CLI_IDENTITY = Identity("client", "cli")
# Long enough for the domain to renew its certificate with it while it runs.
JOIN_TOKEN_TTL = datetime.timedelta(days=30)
ADMIN_PRINCIPAL = "admin"


class Credentials:
    """Issues and renews the certificates of Guardian's children.

    Args:
        data_dir: The data dir (the CA lives in `<data dir>/pki`).
        security: Guardian's own security settings (its certificate path and token file).
        lifetime: Lifetime of the leaf certificates.
        check_every_s: How often the renewal task looks at the certificates.
    """

    def __init__(
        self,
        data_dir: Path,
        security: SecurityConfig,
        lifetime: datetime.timedelta,
        check_every_s: float = 60.0,
    ) -> None:
        self.data_dir = data_dir
        self.security = security
        self.pki = security.ca_file.parent
        self.lifetime = lifetime
        self.check_every_s = check_every_s
        self.ca = CertificateAuthority.load_or_create(self.pki)
        self._issued: dict[Identity, LeafFiles] = {}

    def prepare(self, guardian: str = "guardian") -> None:
        """Issues Guardian's own certificate and the CLI's credential (data dir 0700)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        self.ensure(
            Identity("component", guardian),
            LeafFiles(self.security.cert_file, self.security.key_file, self.security.ca_file),
        )
        self.ensure(CLI_IDENTITY, leaf_files(self.pki, CLI_IDENTITY))
        self.admin_token()

    def ensure(self, identity: Identity, files: LeafFiles | None = None) -> LeafFiles:
        """`identity`'s files, issued now when missing or due for renewal."""
        files = files or leaf_files(self.pki, identity)
        self._issued[identity] = files
        if not files.cert.exists() or not files.key.exists() or self._due(files):
            self._issue(identity, files)
            log.info("issued the certificate of %s", identity.spiffe_id)
        return files

    def signing_key(self, identity: Identity) -> bytes | None:
        """The raw Ed25519 signing key of a component or domain Guardian certifies, created
        at `<data dir>/<name>.key` (0600) when missing; None for a `client` identity."""
        if identity.kind not in ("component", "domain"):
            return None
        return signing.load_or_create_key(
            component_key_path(self.data_dir, identity.name)
        ).public_key

    def _issue(self, identity: Identity, files: LeafFiles) -> None:
        self.ca.issue_files(identity, files, self.lifetime, self.signing_key(identity))

    def _due(self, files: LeafFiles) -> bool:
        return needs_renewal(files.cert.read_bytes(), utcnow())

    def renew_due(self) -> list[Identity]:
        """Re-issues every certificate past two thirds of its lifetime; returns whose."""
        renewed = []
        for identity, files in list(self._issued.items()):
            if self._due(files):
                self._issue(identity, files)
                renewed.append(identity)
                log.info("renewed the certificate of %s", identity.spiffe_id)
        return renewed

    async def renew_forever(self) -> None:
        """The renewal task: `renew_due` every `check_every_s`."""
        while True:
            await asyncio.sleep(self.check_every_s)
            try:
                self.renew_due()
            except (OSError, signing.SigningKeyError):
                log.exception("certificate renewal failed; retrying in %ss", self.check_every_s)

    def issue_ahead(self, name: str, kind: str, gateway: str | None = None) -> None:
        """Issues now what `child_env` would issue for this child (its key and certificate),
        so that its spawn does not wait for them; a domain that joins issues nothing."""
        if kind == "domain" and gateway:
            return
        self.ensure(Identity(kind, name))

    def child_env(self, name: str, kind: str, gateway: str | None = None) -> dict[str, str]:
        """The security variables of a child: its certificate, key, CA and token file.

        A domain (`kind` "domain") joins as any domain would when the topology has a
        gateway (`gateway`, its address): it gets a join token and fetches its own
        certificate with it; otherwise Guardian issues its certificate like a component's.
        """
        identity = Identity(kind, name)
        env = {
            "GRACE_PKI_DIR": str(self.pki),
            "GRACE_CA_FILE": str(self.security.ca_file),
            "GRACE_TOKENS_FILE": str(self.security.tokens_file),
        }
        if kind == "domain" and gateway:
            files = leaf_files(self.pki, identity)
            env["GRACE_JOIN_TOKEN"] = self.join_token(name)
            env["GRACE_JOIN_URL"] = f"https://{gateway}"
        else:
            files = self.ensure(identity)
        env["GRACE_TLS_CERT"] = str(files.cert)
        env["GRACE_TLS_KEY"] = str(files.key)
        return env

    def join_token(self, domain_id: str) -> str:
        """A fresh join token for a domain Guardian runs; the previous one is revoked."""
        store = TokenStore(self.security.tokens_file)
        principal = f"join:{domain_id}"
        for record in store.list():
            if record.principal == principal and not record.revoked:
                store.revoke(record.id)
        token, _ = store.create(principal, [f"domain:{domain_id}"], JOIN_TOKEN_TTL)
        return token

    def admin_token(self) -> str:
        """The admin token in `<data dir>/admin.token`, created when missing or invalid."""
        path = admin_token_file(self.data_dir)
        validator = TokenValidator(self.security.tokens_file, refresh_s=0)
        if path.exists():
            token = path.read_text().strip()
            if validator.validate(token) is not None:
                return token
        token, _ = TokenStore(self.security.tokens_file).create(
            ADMIN_PRINCIPAL, ["admin"], datetime.timedelta(days=365)
        )
        write_private(path, (token + "\n").encode())
        log.info("wrote a new admin token to %s (id %s)", path, token_digest(token)[:12])
        return token

    def join(
        self,
        principal: Principal | None,
        csr: bytes,
        signing_key: bytes = b"",
        signing_key_proof: bytes = b"",
        presented: CallerCertificate | None = None,
    ) -> x509.Certificate:
        """A domain certificate for the caller of JoinDomain.

        The caller must act as exactly one domain (a join token `domain:<id>`, or its
        current domain certificate); the CSR proves possession of the key; the identity is
        the caller's, never what the CSR asks for. The certificate binds `signing_key`
        when the request proves possession of it (`signing_key_proof`); without one, a
        renewal with the domain's current certificate (`presented`) carries its bound key
        forward, and a join token binds none.
        """
        domains = sorted(principal.domains) if principal is not None else []
        if len(domains) != 1:
            raise PermissionDenied(
                "JoinDomain needs a join token (grace token create --domain ID) or the "
                "domain's current certificate"
            )
        identity = Identity("domain", domains[0])
        try:
            public = csr_public_key(csr)
        except PkiError as exc:
            raise InvalidArgument("csr_pem", str(exc)) from None
        bound: bytes | None = None
        if signing_key:
            try:
                check_signing_key_proof(public, signing_key, signing_key_proof)
            except PkiError as exc:
                raise InvalidArgument("signing_key_signature", str(exc)) from None
            bound = signing_key
        elif presented is not None and presented.identity == identity:
            bound = presented.signing_key
        cert = self.ca.issue(identity, public, self.lifetime, bound)
        log.info(
            "issued a joined domain its certificate: %s%s",
            identity.spiffe_id,
            f" (signing key {signing.key_id(bound)})" if bound else "",
        )
        return cert

    def identities(self) -> Iterable[Identity]:
        """Every identity issued so far."""
        return tuple(self._issued)
