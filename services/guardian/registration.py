"""Registers supervised components in the registry and keeps their leases alive.

Plain services do not heartbeat, so Guardian does it for them, driven by its own health
probes: a component whose last probe said SERVING gets a heartbeat every third of its
lease; one that is down gets none, and its lease lapses in the registry (UNHEALTHY), which
is the truth. The registry may itself be down or restarting: every call is retried with
backoff and nothing here ever raises into the supervisor.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc

from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.backoff import Backoff, Retries
from services.common.channels import channel
from services.common.timestamps import to_duration
from services.common.waiting import wait_for_event
from services.guardian.settings import RegistrationSettings

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    host: str
    port: int
    capabilities: tuple[str, ...]
    metadata: dict[str, str]
    registered: bool = False
    wanted: bool = True
    serving: bool = False
    observed_at: float = 0.0
    last_heartbeat: float = 0.0
    fresh_for_s: float = field(default=0.0)


class Registrar:
    """Keeps the registry's view of Guardian's components current.

    Args:
        settings: Lease length and retry cap.
        registry_address: Returns where the registry is now (it may move), or None while
            it is not known.
        clock: Epoch seconds.
    """

    def __init__(
        self,
        settings: RegistrationSettings,
        registry_address: Callable[[], str | None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._address = registry_address
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._wake = asyncio.Event()
        self._channel: grpc.aio.Channel | None = None
        self._channel_target = ""
        self.failures = 0

    @property
    def heartbeat_every_s(self) -> float:
        """Seconds between heartbeats of a healthy component."""
        return self.settings.lease_ttl_s / 3

    def register(
        self,
        name: str,
        host: str,
        port: int,
        capabilities: Sequence[str],
        metadata: dict[str, str],
    ) -> None:
        """Asks for `name` to be (re-)registered with this address."""
        self._entries[name] = _Entry(host, port, tuple(capabilities), dict(metadata))
        self._wake.set()

    def deregister(self, name: str) -> None:
        """Asks for `name` to be removed from the registry."""
        entry = self._entries.get(name)
        if entry is not None:
            entry.wanted = False
            self._wake.set()

    def observed(self, name: str, serving: bool, fresh_for_s: float) -> None:
        """Records a probe result; a SERVING one keeps the lease alive for `fresh_for_s`."""
        entry = self._entries.get(name)
        if entry is None:
            return
        was_serving = entry.serving
        entry.serving = serving
        entry.observed_at = self._clock()
        entry.fresh_for_s = fresh_for_s
        if serving and not was_serving:
            self._wake.set()

    def is_registered(self, name: str) -> bool:
        """True once the registry accepted the latest registration of `name`."""
        entry = self._entries.get(name)
        return entry is not None and entry.registered and entry.wanted

    async def run(self) -> None:
        """Syncs with the registry until cancelled, backing off while it is unreachable."""
        retries = Retries(Backoff(0.2, max_s=self.settings.retry_max_s))
        try:
            while True:
                try:
                    await self.sync_once()
                    retries.succeeded()
                    wait = min(1.0, self.heartbeat_every_s / 2)
                except grpc.aio.AioRpcError as exc:
                    self.failures += 1
                    wait = retries.failed()
                    log.debug("registry unreachable (%s); retrying in %.1fs", exc.code(), wait)
                self._wake.clear()
                await wait_for_event(self._wake, wait)
        finally:
            if self._channel is not None:
                await self._channel.close()

    async def sync_once(self) -> None:
        """One pass: registrations, deregistrations and due heartbeats. Raises on RPC errors."""
        stub = self._stub()
        if stub is None:
            return
        now = self._clock()
        for name, entry in list(self._entries.items()):
            if not entry.wanted:
                await self._deregister(stub, name)
                if self._entries.get(name) is entry:
                    del self._entries[name]
                continue
            if not entry.registered:
                await stub.RegisterDomain(
                    registry_pb2.RegisterDomainRequest(
                        domain_id=name,
                        host=entry.host,
                        port=entry.port,
                        capabilities=entry.capabilities,
                        metadata=entry.metadata,
                        lease_ttl=to_duration(self.settings.lease_ttl_s),
                    ),
                    timeout=5,
                )
                entry.registered = True
                entry.last_heartbeat = now
                log.info("registered %s in the registry at %s:%d", name, entry.host, entry.port)
                continue
            fresh = entry.serving and now - entry.observed_at <= entry.fresh_for_s
            if fresh and now - entry.last_heartbeat >= self.heartbeat_every_s:
                try:
                    await stub.Heartbeat(registry_pb2.HeartbeatRequest(domain_id=name), timeout=5)
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.NOT_FOUND:
                        raise
                    # The registry forgot it (reaped, or a fresh database): register again.
                    entry.registered = False
                    self._wake.set()
                    continue
                entry.last_heartbeat = now

    async def _deregister(
        self, stub: registry_pb2_grpc.RegistryServiceAsyncStub, name: str
    ) -> None:
        try:
            await stub.DeregisterDomain(
                registry_pb2.DeregisterDomainRequest(domain_id=name), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise

    def _stub(self) -> registry_pb2_grpc.RegistryServiceAsyncStub | None:
        target = self._address()
        if target is None:
            return None
        if self._channel is None or target != self._channel_target:
            if self._channel is not None:
                # Closing is async; the old channel is idle and garbage collected otherwise.
                asyncio.get_running_loop().create_task(self._channel.close())
            self._channel = channel(target)
            self._channel_target = target
        return registry_pb2_grpc.RegistryServiceStub(self._channel)
