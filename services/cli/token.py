"""`grace token create | list | revoke`: bearer tokens for people, tools and domains.

Tokens live hashed in `<data dir>/pki/tokens.json`; managing them needs access to the data
dir (which already holds the CA key: its owner is the installation's administrator).
Servers see a new or revoked token within a second, with no restart.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys

from services.cli.credentials import data_dir
from services.common.tokens import (
    DEFAULT_TTL,
    TokenError,
    TokenRecord,
    TokenStore,
    parse_duration,
    tokens_file,
)

EXIT_OK = 0
EXIT_BAD_INPUT = 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds `grace token` and its subcommands."""
    token = subparsers.add_parser("token", help="create, list and revoke bearer tokens")
    commands = token.add_subparsers(dest="token_command", required=True, metavar="COMMAND")

    create = commands.add_parser(
        "create",
        help="create a token; prints it alone on stdout",
        description='Creates a token and prints it alone on stdout (or {"token": ...} '
        "with -o json). Roles: admin, operator, reader, domain:<id>. --domain ID makes a "
        "domain's join token (principal and role domain:<id>).",
    )
    create.add_argument("--principal", help="who the token authenticates (e.g. alice)")
    create.add_argument(
        "--role", action="append", default=[], help="admin, operator, reader (repeatable)"
    )
    create.add_argument("--domain", help="a join token for this domain id")
    create.add_argument(
        "--ttl", default=None, help=f"lifetime, e.g. 12h, 30d (default {DEFAULT_TTL.days}d)"
    )
    _common(create)
    create.set_defaults(handler=_create)

    listing = commands.add_parser("list", help="list tokens (never the tokens themselves)")
    _common(listing)
    listing.set_defaults(handler=_list)

    revoke = commands.add_parser("revoke", help="revoke a token by id (or the token itself)")
    revoke.add_argument("token", help="the id `grace token list` shows, or the token")
    _common(revoke)
    revoke.set_defaults(handler=_revoke)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="data directory (default ./.grace; GRACE_DATA_DIR)")
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text")


def _store(args: argparse.Namespace) -> TokenStore:
    return TokenStore(tokens_file(data_dir(args.data_dir)))


def _fail(message: str) -> int:
    print(f"grace token: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _as_json(record: TokenRecord) -> dict[str, object]:
    return {
        "id": record.id,
        "principal": record.principal,
        "roles": list(record.roles),
        "created_at": _iso(record.created_at),
        "expires_at": _iso(record.expires_at),
        "revoked": record.revoked,
    }


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="seconds")


def _create(args: argparse.Namespace) -> int:
    roles: list[str] = list(args.role)
    principal = args.principal
    if args.domain:
        principal = principal or f"domain:{args.domain}"
        roles.append(f"domain:{args.domain}")
    if not principal:
        return _fail("--principal NAME (or --domain ID) is required")
    if not roles:
        return _fail("--role ROLE (admin, operator, reader) or --domain ID is required")
    try:
        ttl = parse_duration(args.ttl) if args.ttl else DEFAULT_TTL
        token, record = _store(args).create(principal, roles, ttl)
    except TokenError as exc:
        return _fail(str(exc))
    if args.output == "json":
        print(json.dumps({"token": token, **_as_json(record)}))
    else:
        print(token)
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    records = _store(args).list()
    if args.output == "json":
        print(json.dumps({"tokens": [_as_json(r) for r in records]}))
        return EXIT_OK
    print(f"{'ID':<12}  {'PRINCIPAL':<24}  {'ROLES':<24}  {'EXPIRES':<25}  STATE")
    for r in records:
        state = "revoked" if r.revoked else "active"
        roles = ",".join(r.roles)
        print(f"{r.id:<12}  {r.principal:<24}  {roles:<24}  {_iso(r.expires_at):<25}  {state}")
    return EXIT_OK


def _revoke(args: argparse.Namespace) -> int:
    try:
        record = _store(args).revoke(args.token)
    except TokenError as exc:
        return _fail(str(exc))
    if args.output == "json":
        print(json.dumps(_as_json(record)))
    else:
        print(f"revoked {record.id} ({record.principal})")
    return EXIT_OK
