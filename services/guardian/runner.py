"""Runs Guardian in the foreground until SIGINT/SIGTERM: the body of `python -m
services.guardian` and of `grace up`.

Boot happens while Guardian's own gRPC server already answers (NOT_SERVING), so
`grace status` and WatchComponents work during the boot. A signal during the boot cancels
it; either way every component that was started is stopped in reverse boot order before
this returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Protocol

from services.common import telemetry
from services.common.bus_client import EventBusPublisher
from services.common.config import peer_address
from services.common.data_dir import secure_data_dir
from services.common.outbox import Publisher
from services.common.server import GraceServer
from services.common.upkeep import ProcessUpkeep
from services.guardian.config import SERVICE, GuardianConfig
from services.guardian.model import ComponentStatus, StateChange
from services.guardian.process import Zygote
from services.guardian.server import GuardianServer
from services.guardian.supervisor import BootError
from services.guardian.topology import Topology

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_BOOT_FAILED = 1


class Reporter(Protocol):
    """What a foreground front end (`grace up`) shows."""

    def changed(self, change: StateChange) -> None:
        """A component changed state."""

    def booted(self, components: list[ComponentStatus], address: str) -> None:
        """The boot finished."""

    def boot_failed(self, message: str) -> None:
        """The boot failed (a required component did not come up, or Guardian could not
        bind its port)."""

    def stopping(self) -> None:
        """Shutdown begins."""


async def serve(
    config: GuardianConfig,
    topology: Topology,
    *,
    reporter: Reporter | None = None,
    publisher: Publisher | None = None,
    zygote: Zygote | None = None,
) -> int:
    """Boots, supervises until a signal, stops everything; returns the exit code.

    Without an explicit publisher, `healing.*` events go to the event bus of the topology
    (or GRACE_EVENTBUS_ADDR); they wait in Guardian's outbox while the bus is down.
    `zygote` is a fork server the caller launched early (see `fork_server_for`).
    """
    secure_data_dir(config.server.data_dir)
    if publisher is None:
        publisher = EventBusPublisher(_bus_address(config, topology))
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_requested.set)
    # Guardian's own process gets what every server's gets: freed memory handed back, heap
    # snapshots on request, and a stop when a supervisor of its own (if any) is gone.
    upkeep = ProcessUpkeep(config.server.env, SERVICE, stop_requested.set)
    upkeep.start()
    server: GraceServer | None = None
    service = GuardianServer(
        config,
        topology,
        publisher=publisher,
        address=lambda: server.address if server else "",
        zygote=zygote,
    )
    server = GraceServer(config.server, service)
    report_until = asyncio.Event()
    report_task = (
        asyncio.create_task(_report(service, reporter, report_until)) if reporter else None
    )
    starting = asyncio.create_task(server.start(), name="guardian-start")
    stop_wait = asyncio.create_task(stop_requested.wait())
    try:
        await asyncio.wait({starting, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            log.warning("stop requested during the boot")
            starting.cancel()
        try:
            await starting
        except asyncio.CancelledError:
            await _stop_service(service, reporter)
            return EXIT_OK
        except BootError as exc:
            _boot_failed(reporter, f"boot failed: {exc}")
            await _stop_service(service, reporter)
            return EXIT_BOOT_FAILED
        except OSError as exc:
            # Guardian's own port is taken: nothing was started.
            _boot_failed(reporter, str(exc))
            return EXIT_BOOT_FAILED
        if reporter is not None:
            reporter.booted(service.supervisor.statuses(), server.address)
        await stop_wait
        if reporter is not None:
            reporter.stopping()
        await server.stop()
    finally:
        upkeep.stop()
        stop_wait.cancel()
        report_until.set()
        if report_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await report_task
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if zygote is not None:  # the supervisor closed it, unless the boot never began
            await zygote.close()
        telemetry.current().shutdown()
    return EXIT_OK


def _boot_failed(reporter: Reporter | None, message: str) -> None:
    if reporter is not None:
        reporter.boot_failed(message)
    else:
        log.error("%s", message)


async def _stop_service(service: GuardianServer, reporter: Reporter | None) -> None:
    if reporter is not None:
        reporter.stopping()
    await service.stop()


async def _report(service: GuardianServer, reporter: Reporter, until: asyncio.Event) -> None:
    async for change in service.supervisor.follow(until):
        if not change.snapshot:
            reporter.changed(change)


def _bus_address(config: GuardianConfig, topology: Topology) -> str:
    bus = topology.component("eventbus")
    if bus is not None:
        return f"127.0.0.1:{bus.port}"
    return peer_address(config.server.env, "eventbus")
