"""`grace token create | list | revoke`: bearer tokens for people, tools and domains.

Tokens live hashed in `<data dir>/pki/tokens.json`; managing them needs access to the data
dir (which already holds the CA key: its owner is the installation's administrator).
Servers see a new or revoked token within a second, with no restart.
"""

from __future__ import annotations

import datetime
import json

import click

from services.cli.output import Column, path
from services.cli.session import Exit, Failure, common_options, data_dir_option, session
from services.common.tokens import (
    DEFAULT_TTL,
    TokenError,
    TokenRecord,
    TokenStore,
    parse_duration,
    tokens_file,
)

TOKEN_COLUMNS = (
    Column("ID", path("id")),
    Column("PRINCIPAL", path("principal")),
    Column("ROLES", path("roles")),
    Column("EXPIRES", path("expires_at")),
    Column("STATE", path("state"), styled=True),
)


def register(cli: click.Group) -> None:
    """Adds `grace token`."""
    cli.add_command(token)


def _store() -> TokenStore:
    return TokenStore(tokens_file(session().data_dir))


def _as_data(record: TokenRecord) -> dict[str, object]:
    return {
        "id": record.id,
        "principal": record.principal,
        "roles": list(record.roles),
        "created_at": _iso(record.created_at),
        "expires_at": _iso(record.expires_at),
        "revoked": record.revoked,
        "state": "REVOKED" if record.revoked else "ACTIVE",
    }


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="seconds")


@click.group()
def token() -> None:
    """Create, list and revoke bearer tokens (needs the data dir of grace up)."""


@token.command()
@click.option("--principal", help="Who the token authenticates (for example alice).")
@click.option(
    "--role",
    "roles",
    multiple=True,
    help="admin, operator or reader (repeatable).",
)
@click.option("--domain", help="Make a domain's join token (principal and role domain:<id>).")
@click.option("--ttl", help=f"Lifetime, for example 12h or 30d (default {DEFAULT_TTL.days}d).")
@click.option(
    "-o",
    "--output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help='The token alone, or {"token": ...} with its record.',
)
@data_dir_option
def create(
    principal: str | None, roles: tuple[str, ...], domain: str | None, ttl: str | None, output: str
) -> None:
    """Create a token and print it alone on stdout (only now: it is stored hashed)."""
    wanted = list(roles)
    if domain:
        principal = principal or f"domain:{domain}"
        wanted.append(f"domain:{domain}")
    if not principal:
        raise click.UsageError("--principal NAME (or --domain ID) is required")
    if not wanted:
        raise click.UsageError("--role ROLE (admin, operator, reader) or --domain ID is required")
    try:
        lifetime = parse_duration(ttl) if ttl else DEFAULT_TTL
        secret, record = _store().create(principal, wanted, lifetime)
    except TokenError as exc:
        raise click.UsageError(str(exc)) from None
    if output == "json":
        click.echo(json.dumps({"token": secret, **_as_data(record)}))
    else:
        click.echo(secret)


@token.command("list")
@common_options
def list_tokens() -> None:
    """List tokens with their principal, roles and expiry (never the tokens themselves)."""
    s = session()
    s.printer.items([_as_data(record) for record in _store().list()], TOKEN_COLUMNS)


@token.command()
@click.argument("token_id")
@common_options
def revoke(token_id: str) -> None:
    """Revoke a token, by the id `grace token list` shows or by the token itself."""
    s = session()
    try:
        record = _store().revoke(token_id)
    except TokenError as exc:
        raise Failure(str(exc), Exit.NOT_FOUND) from None
    if s.printer.is_table:
        s.printer.line(f"revoked {record.id} ({record.principal})")
    else:
        s.printer.data(_as_data(record))
