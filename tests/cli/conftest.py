"""CLI fixtures: real servers in this process, and `grace` run as a user runs it."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.eventbus.server import EventBusServer
from services.memory.server import MemoryServer
from services.orchestrator.server import OrchestratorServer
from services.registry.server import RegistryServer
from tests.eventbus.conftest import bus_config
from tests.memory.conftest import RecordingPublisher, memory_config
from tests.orchestrator.conftest import ListPublisher, World, orchestrator_config
from tests.registry.conftest import registry_config
from tests.support import own_pki_env, serving, session_pki

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Result:
    """What a person sees after running a command."""

    code: int
    stdout: str
    stderr: str


async def grace(
    *args: str,
    env: Mapping[str, str] | None = None,
    within: float = CLI_TIMEOUT_S,
    test_pki: bool = True,
) -> Result:
    """Runs `grace ARGS` as a subprocess with its output piped (as a script would).

    With `test_pki` the CLI calls the in-process test servers with the test PKI's
    credential; without it, it finds a credential as a user's CLI does (in the data dir).
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        *args,
        cwd=PROJECT_ROOT,
        env={
            **(session_pki().cli_env() if test_pki else own_pki_env()),
            "NO_COLOR": "1",
            **(env or {}),
        },
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


@dataclass
class Platform:
    """Registry, event bus, shared memory and orchestrator on free ports, with fake domains.

    Attributes:
        world: The registry and its fake domains (see tests/orchestrator).
        env: GRACE_<NAME>_ADDR of every server, as the CLI reads them.
    """

    world: World
    env: dict[str, str] = field(default_factory=dict)

    async def grace(self, *args: str, within: float = CLI_TIMEOUT_S) -> Result:
        return await grace(*args, env=self.env, within=within)


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Platform]:
    async with AsyncExitStack() as stack:
        registry = RegistryServer(registry_config(tmp_path / "registry"))
        server, _ = await stack.enter_async_context(serving(registry.config.server, registry))
        world = World(stack, tmp_path, server.address)
        env = {
            "GRACE_REGISTRY_ADDR": server.address,
            # Nothing stored under ./.grace of the project can leak into a test.
            "GRACE_DATA_DIR": str(tmp_path / "no-grace-up"),
        }
        bus = EventBusServer(bus_config(tmp_path / "bus"))
        bus_server, _ = await stack.enter_async_context(serving(bus.config.server, bus))
        env["GRACE_EVENTBUS_ADDR"] = bus_server.address
        memory = MemoryServer(memory_config(tmp_path / "memory"), publisher=RecordingPublisher())
        memory_server, _ = await stack.enter_async_context(serving(memory.config.server, memory))
        env["GRACE_MEMORY_ADDR"] = memory_server.address
        orchestrator = OrchestratorServer(
            orchestrator_config(tmp_path / "orch", server.address),
            publisher=ListPublisher(world.events),
        )
        orch_server, _ = await stack.enter_async_context(
            serving(orchestrator.config.server, orchestrator)
        )
        env["GRACE_ORCHESTRATOR_ADDR"] = orch_server.address
        yield Platform(world, env)
