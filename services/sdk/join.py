"""Joining Grace with a join token: a domain's key, its CSR, its certificate.

A domain started outside `grace up` gets a join token from an operator
(`grace token create --domain ai_domain`) and the Grace CA bundle (`ca.crt`, a file users
copy). With `GRACE_JOIN_TOKEN` set, the SDK, before it serves:

1. generates an ECDSA P-256 key (kept in its TLS key file, 0600),
2. sends a CSR signed with it (proof of possession) to Guardian's `JoinDomain` through the
   gateway (`POST /guardian/domains/join`, HTTPS verified against the CA, the token as
   bearer): the only port a caller without a certificate can reach; with it, the public
   half of its Ed25519 event-signing key (`<data dir>/<id>.key`, created when missing)
   and that key's signature over the CSR's public key, so the certificate binds the key
   the trust kernel will know the domain by (`services.common.pki.SIGNING_KEY_ATTRIBUTE`),
3. writes the certificate Guardian's CA issued, naming `spiffe://grace.local/domain/<id>`
   whatever the CSR asked for.

From then on its server and its calls use that certificate: its registry record,
heartbeats, subscriptions and publishes are bound to `domain:<id>`. It joins again at two
thirds of the certificate's lifetime (with the same token), without a restart.

Variables: `GRACE_JOIN_TOKEN`, `GRACE_JOIN_URL` (the gateway's base URL; default
`https://` + `GRACE_GATEWAY_ADDR`, else `https://127.0.0.1:8000`), and the usual
`GRACE_CA_FILE`, `GRACE_TLS_CERT`, `GRACE_TLS_KEY` (see `services.common.config`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common import signing
from services.common.config import EnvReader, SecurityConfig, peer_address
from services.common.errors import Unauthenticated, Unavailable
from services.common.pki import (
    SERVER_NAME,
    csr_pem,
    generate_key,
    key_pem,
    needs_renewal,
    prove_signing_key,
    utcnow,
    write_private,
)

log = logging.getLogger(__name__)

JOIN_PATH = "/guardian/domains/join"


@dataclass(frozen=True)
class JoinSettings:
    """How a domain joins.

    Attributes:
        token: The join token (role domain:<id>).
        url: The gateway's base URL (`https://host:port`).
        security: Where the CA bundle is read and the key and certificate written.
        signing_key: The domain's Ed25519 event-signing key file, bound in the
            certificate; None binds none.
    """

    token: str
    url: str
    security: SecurityConfig
    signing_key: Path | None = None

    @classmethod
    def from_env(
        cls,
        security: SecurityConfig | None,
        env: Mapping[str, str],
        signing_key: Path | None = None,
    ) -> JoinSettings | None:
        """The settings, or None without `GRACE_JOIN_TOKEN` (or in insecure mode)."""
        reader = EnvReader(env)
        token = reader.raw("GRACE_JOIN_TOKEN")
        if token is None or security is None:
            return None
        url = reader.raw("GRACE_JOIN_URL") or f"https://{peer_address(env, 'gateway')}"
        return cls(token, url.rstrip("/"), security, signing_key)


def due(security: SecurityConfig) -> bool:
    """True when the certificate is missing or past two thirds of its lifetime."""
    try:
        return not security.key_file.exists() or needs_renewal(
            security.cert_file.read_bytes(), utcnow()
        )
    except OSError:
        return True


class _GraceServerContext(ssl.SSLContext):
    """Verifies the gateway as `grace.local`, the name every Grace server certificate
    carries, whatever host the URL names (as gRPC channels override the target name):
    the certificates do not name the addresses a gateway on another host is reached at."""

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        kwargs["server_hostname"] = SERVER_NAME
        return super().wrap_socket(*args, **kwargs)


def _post(url: str, token: str, body: bytes, ca_file: Path) -> dict[str, object]:
    request = urllib.request.Request(
        url + JOIN_PATH,
        data=body,
        method="POST",
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    context = _GraceServerContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(ca_file))
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            payload: dict[str, object] = json.loads(response.read())
            return payload
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        if exc.code in (401, 403):
            raise Unauthenticated(f"join refused ({exc.code}): {text}") from None
        raise Unavailable(f"join failed ({exc.code}): {text}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise Unavailable(f"join: cannot reach {url}: {exc}") from None


async def join(settings: JoinSettings) -> str:
    """Gets a certificate for a fresh key; writes both; returns the SPIFFE ID issued."""
    key = generate_key()
    request: dict[str, str] = {"csr_pem": csr_pem(key).decode()}
    if settings.signing_key is not None:
        # The same key at every renewal, so the binding carries forward.
        signer = signing.load_or_create_key(settings.signing_key)
        request["signing_public_key"] = base64.b64encode(signer.public_key).decode()
        request["signing_key_signature"] = base64.b64encode(
            prove_signing_key(signer, request["csr_pem"].encode())
        ).decode()
    body = json.dumps(request).encode()
    s = settings.security
    payload = await asyncio.to_thread(_post, settings.url, settings.token, body, s.ca_file)
    certificate = str(payload.get("certificate_pem", ""))
    if not certificate.startswith("-----BEGIN CERTIFICATE-----"):
        raise Unavailable("join: the answer holds no certificate")
    write_private(s.key_file, key_pem(key))
    write_private(s.cert_file, certificate.encode())
    spiffe_id = str(payload.get("spiffe_id", ""))
    log.info("joined Grace as %s", spiffe_id)
    return spiffe_id


async def join_if_due(settings: JoinSettings | None) -> None:
    """Joins when there is a token and the certificate is missing or due for renewal."""
    if settings is not None and due(settings.security):
        await join(settings)


async def renew_forever(settings: JoinSettings, check_every_s: float = 60.0) -> None:
    """Joins again at two thirds of the certificate's lifetime (servers reload the files)."""
    while True:
        await asyncio.sleep(check_every_s)
        try:
            await join_if_due(settings)
        except (Unavailable, Unauthenticated) as exc:
            log.warning("certificate renewal failed, retrying in %ss: %s", check_every_s, exc)
