"""Grace as users run it, for end-to-end tests: `grace up --with-examples` on free ports.

`running_grace(root)` starts every component of the built-in topology and the example
domains, each in its own process under Guardian, on free loopback ports, with reflection
and health on; it yields once Guardian reports the platform up and the example domains have
registered themselves, and kills everything with SIGKILL when the block ends, however it
ends: the process group of grace up, and the process group of every component (Guardian
starts each in a session of its own, so killing grace up alone would leave them to notice
their supervisor is gone and stop by themselves). A boot takes about 5 s on an idle machine.

It runs the secure default: grace up creates its own CA and admin token in its data dir,
and while the block runs every `channel()` of the test process uses that credential, as
the `grace` CLI does; `RunningGrace.http()` is an HTTPS client with the admin token.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import signal
import ssl
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from grace.guardian.v1 import guardian_pb2, guardian_pb2_grpc
from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.cli.credentials import client_security
from services.common import channels
from services.common.channels import ClientSecurity, channel
from services.common.tokens import TokenStore, tokens_file
from services.guardian.topology import ComponentSpec, load_topology
from tests.support import credential_env, free_ports, grpcurl_args, own_pki_env

__all__ = ["EXAMPLES", "PROJECT_ROOT", "RunningGrace", "running_grace"]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = "examples"
BOOT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class RunningGrace:
    """A running `grace up --with-examples`.

    Attributes:
        components: The topology's components (core and examples), in boot order.
        addresses: `host:port` of every component and of "guardian".
        data_dir: Its data directory (logs in data_dir/logs).
        security: The credential grace up wrote (None with --insecure).
    """

    components: tuple[ComponentSpec, ...]
    addresses: dict[str, str]
    data_dir: Path
    security: ClientSecurity | None = None

    @property
    def gateway_url(self) -> str:
        """Base URL of the REST gateway."""
        scheme = "http" if self.security is None else "https"
        return f"{scheme}://{self.addresses['gateway']}"

    @property
    def token(self) -> str:
        """The admin token grace up wrote ("" with --insecure)."""
        return (self.security.token or "") if self.security is not None else ""

    def http(self, timeout: float = 60, token: str | None = None) -> httpx.AsyncClient:
        """A client of the gateway that authenticates as a user would (CA and token: the
        admin token grace up wrote, or `token`)."""
        if self.security is None:
            return httpx.AsyncClient(base_url=self.gateway_url, timeout=timeout)
        return httpx.AsyncClient(
            base_url=self.gateway_url,
            timeout=timeout,
            verify=ssl.create_default_context(cafile=str(self.security.ca_file)),
            headers={"authorization": f"Bearer {token or self.token}"},
        )

    def domain_token(self, domain_id: str) -> str:
        """A new token that authenticates as the domain `domain_id` (as its join token
        would), created the way `grace token create --domain` does."""
        principal = f"domain:{domain_id}"
        return self.new_token(principal, principal)

    def new_token(self, principal: str, *roles: str) -> str:
        """A new token for `principal` with `roles`, as `grace token create` makes one
        (servers know it within GRACE_TOKEN_REFRESH_S, 1 s)."""
        store = TokenStore(tokens_file(self.data_dir))
        return store.create(principal, list(roles), datetime.timedelta(hours=1))[0]

    def grpc_components(self) -> list[ComponentSpec]:
        """Components that serve gRPC (all but the HTTP-only gateway)."""
        return [c for c in self.components if not c.health_http_path]

    def env(self) -> dict[str, str]:
        """GRACE_<NAME>_ADDR for every component and Guardian, as clients read them, and
        the credential (GRACE_CA_FILE, GRACE_TLS_CERT, GRACE_TLS_KEY, GRACE_TOKEN)."""
        env = {f"GRACE_{name.upper()}_ADDR": addr for name, addr in self.addresses.items()}
        return {**env, **credential_env(self.security)}

    def grpcurl_args(self) -> list[str]:
        """grpcurl's flags for this Grace: `-cacert`, `-cert`, `-key` and the token."""
        return grpcurl_args(self.security)


@asynccontextmanager
async def running_grace(
    root: Path,
    *,
    config: str = "",
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[RunningGrace]:
    """Boots every component and the example domains on free ports; kills them at the end.

    Args:
        root: An empty directory for the configuration and the data directory.
        config: TOML appended to the generated grace.toml (which sets only the ports).
        args: More arguments for `grace up` (for example `--otlp URL`).
        env: The environment of `grace up`; None inherits the test's.
    """
    components = load_topology(None, groups=[EXAMPLES]).components
    *ports, guardian_port = free_ports(len(components) + 1)
    addresses = {c.name: f"127.0.0.1:{port}" for c, port in zip(components, ports, strict=True)}
    addresses["guardian"] = f"127.0.0.1:{guardian_port}"
    config_file = root / "grace.toml"
    config_file.write_text(
        "".join(
            f"[components.{c.name}]\nport = {port}\n"
            for c, port in zip(components, ports, strict=True)
        )
        + config
    )
    data_dir = root / "data"
    # grace up makes its own CA and tokens: the test session's PKI variables stay out.
    up_env = own_pki_env(env)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "up",
        "--with-examples",
        "--config",
        str(config_file),
        "--data-dir",
        str(data_dir),
        "--port",
        str(guardian_port),
        *args,
        cwd=PROJECT_ROOT,
        env=up_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    output: list[str] = []
    drain: asyncio.Task[None] | None = None
    previous = channels.configured()
    try:
        try:
            await asyncio.wait_for(_read_until_up(proc.stdout, output), BOOT_TIMEOUT_S)
        except TimeoutError:
            pytest.fail("grace up did not come up in time:\n" + "".join(output))
        # An insecure Grace speaks plaintext, whatever certificates its data dir holds.
        security = None if "--insecure" in args else client_security(data_dir, env={})
        channels.configure(security)
        # Keep reading, so a full pipe never blocks grace up while the tests run.
        drain = asyncio.create_task(_read_until_up(proc.stdout, output, until=""))
        await _wait_until_registered(
            addresses["registry"], [c.name for c in components if c.group == EXAMPLES]
        )
        yield RunningGrace(components, addresses, data_dir, security)
    finally:
        channels.configure(previous)
        if proc.returncode is None:
            components_pids = await _component_pids(addresses["guardian"])
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            for pid in components_pids:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        if drain is not None:
            await drain


async def _read_until_up(
    stream: asyncio.StreamReader, output: list[str], until: str = "Grace is up"
) -> None:
    """Collects lines into `output` until one starts with `until` ("" = to the end)."""
    while line := (await stream.readline()).decode(errors="replace"):
        output.append(line)
        if until and line.startswith(until):
            return
    if until:
        pytest.fail("grace up exited before it was up:\n" + "".join(output))


async def _wait_until_registered(registry: str, domain_ids: list[str]) -> None:
    """The example domains register themselves right after they serve: wait for that."""
    deadline = asyncio.get_running_loop().time() + BOOT_TIMEOUT_S
    async with channel(registry) as chan:
        stub = registry_pb2_grpc.RegistryServiceStub(chan)
        for domain_id in domain_ids:
            while True:
                try:
                    await stub.GetDomain(registry_pb2.GetDomainRequest(domain_id=domain_id))
                    break
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.NOT_FOUND:
                        raise
                if asyncio.get_running_loop().time() > deadline:
                    pytest.fail(f"{domain_id} never registered")
                await asyncio.sleep(0.1)


async def _component_pids(guardian: str) -> list[int]:
    """Pids of the components Guardian runs now (each leads its own process group)."""
    try:
        async with channel(guardian) as chan:
            listed = await guardian_pb2_grpc.GuardianServiceStub(chan).ListComponents(
                guardian_pb2.ListComponentsRequest(page_size=1000), timeout=5
            )
    except grpc.aio.AioRpcError:
        return []  # Guardian is gone: its components stop by themselves when they notice.
    return [c.pid for c in listed.components if c.pid > 0]
