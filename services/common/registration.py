"""Keeps a domain registered: register with backoff, heartbeat with metrics, re-register.

A registration that names an instance (`instance_id`) heartbeats and deregisters that
instance only, so several processes can serve one domain id, each with its own lease.

The registrar never gives up and never raises: while the registry is down it retries with
exponential backoff (0.5 s doubling to 30 s by default); when a heartbeat finds the domain
unknown (the registry lost or reaped it) it registers again. The domain serves all along.
SDK domains and the kernels use it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc

from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.backoff import Backoff, Retries

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 5.0


class Registrar:
    """Registration and heartbeats of one domain.

    Args:
        channel: Channel to the registry.
        registration: Builds the RegisterDomain request (called at each registration, so
            it can carry the bound port).
        metrics: Current metrics, sent with each heartbeat; None from it sends a heartbeat
            without metrics (the registry keeps the previous ones), for domains that do
            not measure their calls.
        heartbeat_interval_s: Time between heartbeats.
        backoff_initial_s: First wait after a failure.
        backoff_max_s: Longest wait between attempts.
        sleep: Injectable sleep for tests.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        registration: Callable[[], registry_pb2.RegisterDomainRequest],
        metrics: Callable[[], registry_pb2.DomainMetrics | None],
        *,
        heartbeat_interval_s: float,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._stub = registry_pb2_grpc.RegistryServiceStub(channel)
        self._registration = registration
        self._metrics = metrics
        self.heartbeat_interval_s = heartbeat_interval_s
        self.backoff = Backoff(backoff_initial_s, max_s=backoff_max_s)
        self._sleep = sleep
        self.registered = asyncio.Event()
        self.registrations = 0
        self.heartbeats = 0
        self.failures = 0
        self.last_error = ""

    async def run(self) -> None:
        """Registers, then heartbeats forever; cancel to stop."""
        while True:
            await self._register_until_done()
            await self._heartbeat_until_lost()

    async def deregister(self) -> None:
        """Removes the domain from the registry (best effort, at shutdown)."""
        if not self.registered.is_set():
            return
        registration = self._registration()
        request = registry_pb2.DeregisterDomainRequest(
            domain_id=registration.domain_id, instance_id=registration.instance_id
        )
        try:
            await self._stub.DeregisterDomain(request, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            log.info("deregistration failed (%s); the lease will lapse", exc.code().name)
        self.registered.clear()

    async def _register_until_done(self) -> None:
        retries = Retries(self.backoff)
        while True:
            request = self._registration()
            try:
                await self._stub.RegisterDomain(request, timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                wait = retries.failed()
                self._failed("registration", exc, wait)
                await self._sleep(wait)
                continue
            self.registrations += 1
            self.registered.set()
            log.info(
                "registered %s (port %d, capabilities %s)",
                request.domain_id,
                request.port,
                ", ".join(request.capabilities) or "-",
            )
            return

    async def _heartbeat_until_lost(self) -> None:
        """Heartbeats until the registry no longer knows the domain."""
        retries = Retries(self.backoff)
        wait = self.heartbeat_interval_s
        registration = self._registration()
        domain_id, instance_id = registration.domain_id, registration.instance_id
        while True:
            await self._sleep(wait)
            request = registry_pb2.HeartbeatRequest(
                domain_id=domain_id, instance_id=instance_id, metrics=self._metrics()
            )
            try:
                await self._stub.Heartbeat(request, timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    log.warning("registry no longer knows %s; registering again", domain_id)
                    self.registered.clear()
                    return
                # Keep heartbeating sooner than the interval while the registry is away, so
                # the lease is renewed as soon as it is back.
                wait = min(retries.failed(), self.heartbeat_interval_s)
                self._failed("heartbeat", exc, wait)
                continue
            self.heartbeats += 1
            retries.succeeded()
            wait = self.heartbeat_interval_s

    def _failed(self, what: str, exc: grpc.aio.AioRpcError, retry_in: float) -> None:
        self.failures += 1
        self.last_error = f"{exc.code().name}: {exc.details()}"
        log.warning("%s failed (%s); retrying in %.1fs", what, self.last_error, retry_in)
