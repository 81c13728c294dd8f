"""Helpers for tests: a clock tests can move, in-process servers on free ports, callers
that give up midway, and polling until something holds."""

from __future__ import annotations

import asyncio
import atexit
import datetime
import functools
import inspect
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from services.common import channels, completion
from services.common.channels import ClientSecurity, channel
from services.common.config import SecurityConfig, ServerConfig
from services.common.pki import (
    SERVER_NAME,
    CertificateAuthority,
    Identity,
    LeafFiles,
    leaf_files,
)
from services.common.server import GraceServer, Service
from services.common.tokens import TokenStore


class ManualClock:
    """A clock that only moves when told to. Starts at a fixed epoch time."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


STOP_TIMEOUT_S = 30.0

# Peers a test did not start are given an address nothing listens on (port 9 is
# "discard"), so a test server never talks to a real Grace running on the default ports.
UNREACHABLE = "127.0.0.1:9"
ISOLATED_PEERS = {
    f"GRACE_{peer.upper()}_ADDR": UNREACHABLE
    for peer in (
        "eventbus",
        "registry",
        "memory",
        "orchestrator",
        "guardian",
        "immutable_log",
        "trust",
        "governance",
        "immune",
        "scheduler",
        "librarian",
        "tasks",
        "learning",
        "triggers",
    )
}


TEST_COMPONENT = "tests"


@dataclass(frozen=True)
class TestPki:
    """The test session's Grace CA, certificates and tokens (one per test process).

    Every in-process test server is secure: TLS with the `component:tests` certificate,
    tokens checked against `tokens_file`. The test process's own channels present the
    same certificate and the admin token; attack tests make channels with other
    credentials (`client`).
    """

    directory: Path
    ca: CertificateAuthority
    tokens_file: Path
    component: LeafFiles
    admin_token: str
    operator_token: str
    reader_token: str

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.crt"

    def security(self) -> SecurityConfig:
        """Server settings using the `component:tests` certificate."""
        return SecurityConfig(
            ca_file=self.ca_file,
            cert_file=self.component.cert,
            key_file=self.component.key,
            tokens_file=self.tokens_file,
            token_refresh_s=0.0,
        )

    def client(self, token: str | None = None, identity: Identity | None = None) -> ClientSecurity:
        """Client credentials: a certificate for `identity` (default a `client` one, which
        carries no authority: anonymous without a token) and optionally a token."""
        identity = identity or Identity("client", "tests")
        files = leaf_files(self.directory, identity)
        if not files.cert.exists():
            self.ca.issue_files(identity, files)
        return ClientSecurity(self.ca_file, files.cert, files.key, token)

    def grpcurl_args(self, token: str | None = None) -> list[str]:
        """grpcurl's TLS flags (CA, client certificate) and the admin token by default."""
        return grpcurl_args(self.client(token=token or self.admin_token))

    def env(self) -> dict[str, str]:
        """Environment variables that make a server process use this PKI."""
        return {
            "GRACE_CA_FILE": str(self.ca_file),
            "GRACE_TLS_CERT": str(self.component.cert),
            "GRACE_TLS_KEY": str(self.component.key),
            "GRACE_TOKENS_FILE": str(self.tokens_file),
        }

    def cli_env(self, token: str | None = None) -> dict[str, str]:
        """The environment of a `grace` CLI process that calls the test servers."""
        self.client(identity=Identity("client", "cli"))
        return {
            **os.environ,
            "GRACE_PKI_DIR": str(self.directory),
            "GRACE_TOKEN": token or self.admin_token,
        }

    def sync_channel(self, address: str) -> grpc.Channel:
        """A blocking channel to a test server, as the `component:tests` identity."""
        credentials = grpc.ssl_channel_credentials(
            self.ca_file.read_bytes(),
            self.component.key.read_bytes(),
            self.component.cert.read_bytes(),
        )
        return grpc.secure_channel(
            address, credentials, options=[("grpc.ssl_target_name_override", SERVER_NAME)]
        )

    def channel_as(self, address: str, principal: str, *roles: str) -> grpc.aio.Channel:
        """A channel to `address` authenticated by a new token for `principal` with `roles`."""
        return channel(address, security=self.client(token=self.token(principal, *roles)))

    def token(self, principal: str, *roles: str) -> str:
        """A new token for `principal` with `roles`."""
        return TokenStore(self.tokens_file).create(principal, roles)[0]

    def issue(self, identity: Identity, lifetime: datetime.timedelta) -> LeafFiles:
        """(Re-)issues `identity`'s certificate with `lifetime`."""
        files = leaf_files(self.directory, identity)
        self.ca.issue_files(identity, files, lifetime)
        return files


@functools.cache
def session_pki() -> TestPki:
    """The session's PKI, created on first use and removed at exit."""
    directory = Path(tempfile.mkdtemp(prefix="grace-test-pki-"))
    atexit.register(shutil.rmtree, directory, True)
    ca = CertificateAuthority.load_or_create(directory)
    component = leaf_files(directory, Identity("component", TEST_COMPONENT))
    ca.issue_files(Identity("component", TEST_COMPONENT), component)
    store = TokenStore(directory / "tokens.json")
    pki = TestPki(
        directory=directory,
        ca=ca,
        tokens_file=store.path,
        component=component,
        admin_token=store.create("test-admin", ["admin"])[0],
        operator_token=store.create("test-operator", ["operator"])[0],
        reader_token=store.create("test-reader", ["reader"])[0],
    )
    # The test process calls as an admin over the `component:tests` certificate.
    channels.configure(ClientSecurity(pki.ca_file, component.cert, component.key, pki.admin_token))
    return pki


def credential_env(security: ClientSecurity | None) -> dict[str, str]:
    """A client's credential as the variables non-Python clients read ({} for plaintext)."""
    if security is None:
        return {}
    env = {"GRACE_CA_FILE": str(security.ca_file)}
    if security.cert_file is not None and security.key_file is not None:
        env.update(
            {"GRACE_TLS_CERT": str(security.cert_file), "GRACE_TLS_KEY": str(security.key_file)}
        )
    if security.token:
        env["GRACE_TOKEN"] = security.token
    return env


def grpcurl_args(security: ClientSecurity | None) -> list[str]:
    """grpcurl's flags for a credential: `-plaintext`, or the CA, certificate and token."""
    if security is None:
        return ["-plaintext"]
    args = ["-cacert", str(security.ca_file)]
    if security.cert_file is not None and security.key_file is not None:
        args += ["-cert", str(security.cert_file), "-key", str(security.key_file)]
    if security.token:
        args += ["-H", f"authorization: Bearer {security.token}"]
    return args


TEST_PKI_VARS = (
    "GRACE_CA_FILE",
    "GRACE_TLS_CERT",
    "GRACE_TLS_KEY",
    "GRACE_TOKENS_FILE",
    "GRACE_PKI_DIR",
)


def own_pki_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default os.environ) without the test PKI's variables: for `grace up` and the
    CLI, which use the CA and credential of their own data dir."""
    return {k: v for k, v in (os.environ if env is None else env).items() if k not in TEST_PKI_VARS}


def server_config(
    service: str, data_dir: Path, database_url: str = "", peers: dict[str, str] | None = None
) -> ServerConfig:
    """A config binding 127.0.0.1 on a free port, with its data under `data_dir`.

    Args:
        peers: Addresses of peers the test runs, as GRACE_<PEER>_ADDR variables; every
            other peer is unreachable.
    """
    return ServerConfig(
        service=service,
        host="127.0.0.1",
        port=0,
        data_dir=data_dir,
        database_url=database_url or f"sqlite+aiosqlite:///{data_dir / (service + '.db')}",
        shutdown_grace_s=0.5,
        security=session_pki().security(),
        env={**ISOLATED_PEERS, **(peers or {})},
    )


@asynccontextmanager
async def serving(
    config: ServerConfig, service: Service
) -> AsyncIterator[tuple[GraceServer, grpc.aio.Channel]]:
    """Runs `service` on a real server and yields it with a channel to it.

    A service that does not stop within STOP_TIMEOUT_S fails the test, with the stacks of
    every pending task on stderr, instead of hanging the suite.
    """
    server = GraceServer(config, service)
    await server.start()
    try:
        async with channel(server.address) as chan:
            yield server, chan
    finally:
        try:
            await asyncio.wait_for(server.stop(grace=0.5), STOP_TIMEOUT_S)
        except TimeoutError:
            for task in asyncio.all_tasks():
                task.print_stack(file=sys.stderr)
            raise AssertionError(
                f"{config.service} did not stop within {STOP_TIMEOUT_S}s"
            ) from None


def free_ports(count: int) -> list[int]:
    """Loopback ports that were free a moment ago (bound together, so all distinct)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port() -> int:
    """One loopback port that was free a moment ago."""
    return free_ports(1)[0]


@dataclass(frozen=True)
class Pause:
    """A place a patched call holds its caller: `reached` is set once it holds there, and
    it goes on when `release` is set."""

    reached: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def hold(self) -> None:
        self.reached.set()
        await self.release.wait()


def pause_after(
    monkeypatch: pytest.MonkeyPatch,
    owner: object,
    name: str,
    when: Callable[..., bool] | None = None,
) -> Pause:
    """Makes the async method `owner.<name>` hold its caller just after it returns, the first
    time `when` accepts its arguments (the first time at all without `when`): the moment a
    client's deadline cancels the RPC's handler that called it."""
    pause = Pause()
    real = getattr(owner, name)

    @functools.wraps(real)
    async def then_pause(*args: Any, **kwargs: Any) -> Any:
        result = await real(*args, **kwargs)
        if not pause.reached.is_set() and (when is None or when(*args, **kwargs)):
            await pause.hold()
        return result

    monkeypatch.setattr(owner, name, then_pause)
    return pause


def pause_after_commit(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> Pause:
    """Makes the async context manager `owner.<name>()` (a transaction) hold its caller just
    after its first block ends without error, when what it wrote is committed."""
    pause = Pause()
    real = getattr(owner, name)

    @asynccontextmanager
    async def then_pause(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async with real(*args, **kwargs) as entered:
            yield entered
        if not pause.reached.is_set():
            await pause.hold()

    monkeypatch.setattr(owner, name, then_pause)
    return pause


async def give_up_at(change: Coroutine[Any, Any, object], pause: Pause) -> None:
    """Runs `change` and cancels it once it holds at `pause`, as a client's deadline cancels
    its RPC's handler; `pause` is left for the test to release."""
    caller = asyncio.create_task(change)
    await pause.reached.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller


async def eventually(
    check: Callable[[], Any],
    within_s: float = 20.0,
    *,
    what: str = "condition",
    every_s: float = 0.02,
) -> Any:
    """Polls `check` (a plain function, or one returning an awaitable) every `every_s` until
    it returns something truthy, and returns that. What a test waits for on servers and
    processes happens some time after the call that caused it, so the test polls for it;
    after `within_s` it fails naming `what` rather than hanging."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + within_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if loop.time() > give_up:
            pytest.fail(f"{what}: not reached within {within_s:g} s")
        await asyncio.sleep(every_s)


# Long enough for a change left running to end on a slow machine's PostgreSQL; a change still
# running after it fails the test's assertions rather than hanging it.
DRAIN_TIMEOUT_S = 10.0


async def give_up_midway(change: Coroutine[Any, Any, object], pause: Pause) -> None:
    """Gives up on `change` at `pause` (see `give_up_at`), releases it, and returns once
    whatever still runs of it has ended."""
    await give_up_at(change, pause)
    pause.release.set()
    await completion.drain(timeout_s=DRAIN_TIMEOUT_S)
