"""Interop fixtures: one `grace up --with-examples` shared by the package, and the registry's.

Clients in other languages (Node.js, grpcurl) are tested against Grace as users run it: every
component in its own process under Guardian, on free ports, with reflection and health on.
The platform starts once for the whole package (about 5 s) and its process group is killed
after the last interop test.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.channels import channel
from services.guardian.topology import ComponentSpec, load_topology
from tests.guardian.conftest import free_ports
from tests.registry.conftest import clock, registry_server

__all__ = ["RunningGrace", "clock", "grace_platform", "registry_server"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = "examples"
BOOT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class RunningGrace:
    """A running `grace up --with-examples`.

    Attributes:
        components: The topology's components (core and examples), in boot order.
        addresses: `host:port` of every component and of "guardian".
        data_dir: Its data directory (logs in data_dir/logs).
    """

    components: tuple[ComponentSpec, ...]
    addresses: dict[str, str]
    data_dir: Path

    def grpc_components(self) -> list[ComponentSpec]:
        """Components that serve gRPC (all but the HTTP-only gateway)."""
        return [c for c in self.components if not c.health_http_path]

    def env(self) -> dict[str, str]:
        """GRACE_<NAME>_ADDR for every component and Guardian, as clients read them."""
        return {f"GRACE_{name.upper()}_ADDR": addr for name, addr in self.addresses.items()}


@pytest.fixture(scope="package")
async def grace_platform(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGrace]:
    """Boots every component and the example domains on free ports; kills them at the end."""
    components = load_topology(None, groups=[EXAMPLES]).components
    *ports, guardian_port = free_ports(len(components) + 1)
    addresses = {c.name: f"127.0.0.1:{port}" for c, port in zip(components, ports, strict=True)}
    addresses["guardian"] = f"127.0.0.1:{guardian_port}"
    root = tmp_path_factory.mktemp("grace-up")
    config = root / "grace.toml"
    config.write_text(
        "".join(
            f"[components.{c.name}]\nport = {port}\n"
            for c, port in zip(components, ports, strict=True)
        )
    )
    data_dir = root / "data"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "up",
        "--with-examples",
        "--config",
        str(config),
        "--data-dir",
        str(data_dir),
        "--port",
        str(guardian_port),
        cwd=PROJECT_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    output: list[str] = []
    drain: asyncio.Task[None] | None = None
    try:
        try:
            await asyncio.wait_for(_read_until_up(proc.stdout, output), BOOT_TIMEOUT_S)
        except TimeoutError:
            pytest.fail("grace up did not come up in time:\n" + "".join(output))
        # Keep reading, so a full pipe never blocks grace up while the tests run.
        drain = asyncio.create_task(_read_until_up(proc.stdout, output, until=""))
        await _wait_until_registered(
            addresses["registry"], [c.name for c in components if c.group == EXAMPLES]
        )
        yield RunningGrace(components, addresses, data_dir)
    finally:
        if proc.returncode is None:
            # The whole group: grace up and every component it started.
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
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
