"""How the `grace` CLI authenticates: the credential `grace up` wrote in the data dir.

The data dir is `--data-dir`, else `GRACE_DATA_DIR`, else `./.grace`, as for `grace up`
(`services.cli.session` finds it and loads the credential for every command that calls
Grace). When `<data dir>/pki/ca.crt` exists Grace runs secure: the CLI verifies servers against
that CA, opens mutual TLS with the tools' `client` certificate and sends the token from
`GRACE_TOKEN`, else `<data dir>/admin.token`. Without a CA (or with `GRACE_INSECURE=true`)
it speaks plaintext, as to `grace up --insecure`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from services.common.channels import ClientSecurity
from services.common.config import EnvReader
from services.common.pki import Identity, leaf_files
from services.common.tokens import admin_token_file

CLI_IDENTITY = Identity("client", "cli")


def client_security(directory: Path, env: Mapping[str, str] | None = None) -> ClientSecurity | None:
    """The CLI's credentials for a Grace whose data dir is `directory` (None: plaintext)."""
    env = os.environ if env is None else env
    reader = EnvReader(env)
    if reader.flag("GRACE_INSECURE", False):
        return None
    pki = Path(reader.text("GRACE_PKI_DIR", str(directory / "pki")))
    ca = Path(reader.text("GRACE_CA_FILE", str(pki / "ca.crt")))
    if not ca.exists():
        return None
    token = reader.raw("GRACE_TOKEN")
    token_file = admin_token_file(directory)
    if token is None and token_file.exists():
        token = token_file.read_text().strip() or None
    files = leaf_files(pki, CLI_IDENTITY)
    has_cert = files.cert.exists() and files.key.exists()
    return ClientSecurity(
        ca, files.cert if has_cert else None, files.key if has_cert else None, token
    )
