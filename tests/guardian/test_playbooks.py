"""Healing playbooks against real processes and a real registry."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.guardian.model import State
from services.guardian.playbooks import Healer
from services.guardian.ports import tier
from services.guardian.process import ChildProcess
from services.guardian.registration import Registrar
from services.guardian.settings import RegistrationSettings
from services.guardian.store import GuardianStore
from services.guardian.supervisor import Supervisor
from services.registry.server import RegistryServer
from tests.guardian.conftest import (
    TEST_COMPONENT,
    component,
    pid_exists,
    port_open,
    state_of,
    supervising,
    topology,
)
from tests.registry.conftest import registry_config
from tests.support import Pause, eventually, free_ports, give_up_midway, pause_after, serving

pytestmark = pytest.mark.slow

Stub = registry_pb2_grpc.RegistryServiceStub


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[tuple[str, Stub]]:
    """A real registry server; yields its address and a stub."""
    service = RegistryServer(registry_config(tmp_path / "registry"))
    async with serving(service.config.server, service) as (server, chan):
        yield server.address, registry_pb2_grpc.RegistryServiceStub(chan)


OneComponent = tuple[Supervisor, GuardianStore, Healer]


@pytest.fixture
async def one_component(tmp_path: Path) -> AsyncIterator[OneComponent]:
    """A supervisor running one booted test component, "svc", with a healer over it."""
    (port,) = free_ports(1)
    async with supervising(topology({"svc": component("svc", port)}), tmp_path) as (
        supervisor,
        store,
    ):
        await supervisor.boot()
        yield supervisor, store, Healer(supervisor, store, supervisor.journal)


async def _domain(stub: Stub, name: str) -> registry_pb2.Domain | None:
    try:
        response = await stub.GetDomain(registry_pb2.GetDomainRequest(domain_id=name))
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return None
    return response.domain


async def _until_domain(
    stub: Stub, name: str, check: Callable[[registry_pb2.Domain | None], bool], what: str
) -> registry_pb2.Domain | None:
    started = time.monotonic()
    while True:
        domain = await _domain(stub, name)
        if check(domain):
            return domain
        if time.monotonic() - started > 20:
            raise AssertionError(f"timed out waiting for {what}: {domain}")
        await asyncio.sleep(0.05)


def _registrar(address: str, lease_ttl_s: float = 30.0) -> Registrar:
    settings = RegistrationSettings(enabled=True, lease_ttl_s=lease_ttl_s, retry_max_s=0.5)
    return Registrar(settings, lambda: address)


async def test_rebind_port_moves_the_component_in_its_tier_and_updates_the_registry(
    tmp_path: Path, registry: tuple[str, Stub]
) -> None:
    address, stub = registry
    (port,) = free_ports(1)
    registrar = _registrar(address)
    topo = topology(
        {"mover": component("mover", port, capabilities=["moving"])},
        registration={"enabled": True},
    )
    async with supervising(topo, tmp_path, registrar) as (supervisor, store):
        runner = asyncio.create_task(registrar.run())
        try:
            await supervisor.boot()
            await _until_domain(
                stub, "mover", lambda d: d is not None and d.port == port, "registration"
            )
            result = await Healer(supervisor, store, supervisor.journal).heal(
                "mover", "rebind_port"
            )
            assert result.success, result.message
            new_port = result.component.port
            assert new_port != port
            assert new_port in tier(port)
            assert state_of(supervisor, "mover") == State.SERVING
            assert port_open(new_port)
            assert not port_open(port)
            domain = await _until_domain(
                stub, "mover", lambda d: d is not None and d.port == new_port, "the new port"
            )
            assert domain is not None
            assert list(domain.capabilities) == ["moving"]
            assert domain.status == registry_pb2.DOMAIN_STATUS_HEALTHY
        finally:
            runner.cancel()


async def test_heartbeats_follow_probes_and_a_dead_component_lease_lapses(
    tmp_path: Path, registry: tuple[str, Stub]
) -> None:
    address, stub = registry
    (port,) = free_ports(1)
    registrar = _registrar(address, lease_ttl_s=1.5)
    topo = topology(
        {"leased": component("leased", port)},
        registration={"enabled": True},
        restart={"budget": 0},
    )
    async with supervising(topo, tmp_path, registrar) as (supervisor, _):
        runner = asyncio.create_task(registrar.run())
        try:
            await supervisor.boot()
            first = await _until_domain(stub, "leased", lambda d: d is not None, "registration")
            assert first is not None
            # Well past one lease: probes keep renewing it.
            await asyncio.sleep(2.5)
            alive = await _domain(stub, "leased")
            assert alive is not None
            assert alive.status == registry_pb2.DOMAIN_STATUS_HEALTHY
            assert alive.last_heartbeat_at.ToNanoseconds() > first.last_heartbeat_at.ToNanoseconds()
            # Dead and out of budget: no more heartbeats, the lease lapses.
            process = supervisor.process("leased")
            assert process is not None
            process_pid = process.pid
            os.kill(process_pid, signal.SIGKILL)
            await eventually(lambda: state_of(supervisor, "leased") == State.FAILED)
            await _until_domain(
                stub,
                "leased",
                lambda d: d is not None and d.status == registry_pb2.DOMAIN_STATUS_UNHEALTHY,
                "the lease to lapse",
            )
        finally:
            runner.cancel()


async def test_restart_component_replaces_the_process_and_records_the_decisions(
    one_component: OneComponent,
) -> None:
    supervisor, store, healer = one_component
    old_pid = supervisor.status("svc").pid
    result = await healer.heal("svc", "restart_component")
    assert result.success
    assert result.component.state == State.SERVING
    assert result.component.pid != old_pid
    assert not pid_exists(old_pid)
    decisions = [(d.event_type, d.data["playbook"]) for d in await store.decisions("svc")]
    assert decisions == [
        ("healing.started", "restart_component"),
        ("healing.completed", "restart_component"),
    ]


async def test_diagnose_network_reports_a_stopped_component_and_changes_nothing(
    one_component: OneComponent,
) -> None:
    supervisor, store, healer = one_component
    healthy = await healer.heal("svc", "diagnose_network")
    assert healthy.success
    assert {f.check for f in healthy.findings} >= {"process_alive", "port_listening", "health"}
    assert all(f.ok for f in healthy.findings)

    await supervisor.stop("svc")
    sick = await healer.heal("svc", "diagnose_network")
    assert not sick.success
    by_check = {f.check: f for f in sick.findings}
    assert not by_check["process_alive"].ok
    assert not by_check["port_listening"].ok
    assert "UNREACHABLE" in by_check["health"].detail
    assert state_of(supervisor, "svc") == State.STOPPED
    assert await store.decisions("svc") == []


async def test_clear_port_refuses_a_process_guardian_did_not_start(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    async with supervising(topology({"svc": component("svc", port)}), tmp_path) as (
        supervisor,
        store,
    ):
        await supervisor.boot()
        await supervisor.stop("svc")
        with socket.socket() as squatter:
            # The stopped server's closed connections may sit in TIME_WAIT on this port.
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            healer = Healer(supervisor, store, supervisor.journal)
            with pytest.raises(FailedPrecondition, match="which Guardian did not start"):
                await healer.heal("svc", "clear_port")
            # Guardian's own choice without a playbook is clear_port too, and refuses too.
            with pytest.raises(FailedPrecondition, match="refusing to touch it"):
                await healer.heal("svc")
            assert port_open(port)  # the stranger still listens
            assert state_of(supervisor, "svc") == State.STOPPED


async def test_clear_port_kills_a_stale_process_guardian_started_and_restarts(
    tmp_path: Path,
) -> None:
    (port,) = free_ports(1)
    topo = topology({"svc": component("svc", port, can_fail=True, startup_timeout_s=3.0)})
    async with supervising(topo, tmp_path) as (supervisor, store):
        # A leftover of an earlier Guardian run (which crashed): it holds the port and its
        # spawn was recorded in the same store.
        stale = ChildProcess(
            "svc",
            [sys.executable, "-m", TEST_COMPONENT, "--name", "svc"],
            {**os.environ, "GRACE_SVC_PORT": str(port)},
            tmp_path / "stale.log",
        )
        await stale.spawn()
        try:
            assert stale.start_ticks is not None
            await store.record_spawn(stale.pid, stale.start_ticks, "svc", port)
            await eventually(lambda: port_open(port), what="the stale process to listen")

            await supervisor.boot()  # svc cannot bind: it may fail, so the boot goes on
            assert state_of(supervisor, "svc") == State.FAILED
            assert supervisor.status("svc").last_error.startswith(
                f"port {port} is already in use by pid {stale.pid}"
            )

            healer = Healer(supervisor, store, supervisor.journal)
            result = await healer.heal("svc", "clear_port")
            assert result.success, result.message
            assert [f.check for f in result.findings if f.check == "killed"] == ["killed"]
            await asyncio.wait_for(stale.wait(), 5)  # the stale process is gone
            assert state_of(supervisor, "svc") == State.SERVING
        finally:
            await stale.stop(1.0)
        assert supervisor.status("svc").pid != stale.pid


async def test_unknown_components_and_playbooks_are_rejected(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    async with supervising(topology({"svc": component("svc", port)}), tmp_path) as (
        supervisor,
        store,
    ):
        healer = Healer(supervisor, store, supervisor.journal)
        with pytest.raises(NotFound):
            await healer.heal("librarian_kernel")
        with pytest.raises(InvalidArgument, match="playbook"):
            await healer.heal("svc", "reboot_universe")


def once_exited(monkeypatch: pytest.MonkeyPatch, supervisor: Supervisor) -> Pause:
    """Holds the caller of svc's stop once its process has exited, before the supervisor
    marks it STOPPED: where a caller's deadline would cut it."""
    process = supervisor.process("svc")
    assert process is not None
    return pause_after(monkeypatch, type(process), "stop")


@pytest.mark.parametrize(
    ("operation", "ends"),
    [("heal", State.SERVING), ("restart", State.SERVING), ("stop", State.STOPPED)],
)
async def test_a_heal_or_control_operation_whose_caller_gives_up_midway_still_ends(
    one_component: OneComponent, monkeypatch: pytest.MonkeyPatch, operation: str, ends: State
) -> None:
    # Cut while the old process is stopped (a caller's deadline): the operation still ends
    # as if its caller had waited, and a heal journals how it ended.
    supervisor, store, healer = one_component
    old_pid = supervisor.status("svc").pid
    if operation == "heal":
        change = healer.heal("svc", "restart_component")
    else:
        change = getattr(healer, operation)("svc")
    await give_up_midway(change, once_exited(monkeypatch, supervisor))
    after = await supervisor.ready("svc")
    assert after.state == ends
    assert not pid_exists(old_pid)
    if ends == State.SERVING:
        assert after.pid not in (0, old_pid)
    if operation == "heal":
        await supervisor.journal.flush()
        kinds = [d.event_type for d in await store.decisions("svc")]
        assert kinds == ["healing.started", "healing.completed"]


@pytest.mark.parametrize("playbook", ["restart_component", "clear_port"])
async def test_a_heal_under_way_when_the_shutdown_begins_leaves_its_component_stopped(
    one_component: OneComponent, monkeypatch: pytest.MonkeyPatch, playbook: str
) -> None:
    # Starting the component again would only lengthen the shutdown's wait for the heal
    # and make the shutdown stop it once more.
    supervisor, store, healer = one_component
    old_pid = supervisor.status("svc").pid
    exited = once_exited(monkeypatch, supervisor)
    heal = asyncio.create_task(healer.heal("svc", playbook))
    await exited.reached.wait()
    supervisor.begin_shutdown()
    exited.release.set()
    if playbook == "clear_port":
        with pytest.raises(Unavailable, match="shutting down"):
            await heal
    else:
        assert not (await heal).success
    after = supervisor.status("svc")
    assert (after.state, after.pid) == (State.STOPPED, 0)
    assert not pid_exists(old_pid)
    await supervisor.journal.flush()
    kinds = [d.event_type for d in await store.decisions("svc")]
    assert kinds == ["healing.started", "healing.failed"]
