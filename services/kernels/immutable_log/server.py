"""Wires the immutable log core, its store and its servicers into the shared runtime."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import grpc

from grace.domain.v1 import domain_pb2_grpc
from grace.kernels.immutable_log.v1 import immutable_log_pb2, immutable_log_pb2_grpc
from services.common import signing
from services.common.channels import channel
from services.common.config import peer_address
from services.common.event_verification import EventVerifier, TrustKeySource
from services.common.server import Service
from services.common.storage import Database
from services.common.subscriptions import Subscriptions
from services.kernels import domain
from services.kernels.immutable_log.actions import (
    EVENT_PATTERNS,
    batch_recorder,
    event_recorder,
    log_actions,
)
from services.kernels.immutable_log.config import CAPABILITIES, SERVICE, LogConfig
from services.kernels.immutable_log.log import ImmutableLog
from services.kernels.immutable_log.servicer import ImmutableLogServicer
from services.kernels.immutable_log.store import LogStore
from services.kernels.registration import keep_registered, mounted, peer_health_of

log = logging.getLogger(__name__)

SERVICE_NAME = immutable_log_pb2.DESCRIPTOR.services_by_name["ImmutableLogService"].full_name


class ImmutableLogServer(Service):
    """The immutable log as a Grace service.

    Args:
        config: Server and log settings.
        schema: PostgreSQL schema (tests); None for the default.
    """

    def __init__(self, config: LogConfig, *, schema: str | None = None) -> None:
        self.config = config
        self.peer_health = peer_health_of(config.registration, config.server.env)
        key = signing.load_or_create_key(config.key_file)  # also writes the .pub beside it
        self.log = ImmutableLog(
            LogStore(Database(config.server.database_url, schema=schema)), key, config.settings
        )
        # Events are recorded only when their signature passes the bus's rules.
        self.keys = TrustKeySource(peer_address(config.server.env, "trust"))
        self.verifier = EventVerifier(self.keys, "reject")
        self._bus: grpc.aio.Channel | None = None
        self.subscriptions: Subscriptions | None = None

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        immutable_log_pb2_grpc.add_ImmutableLogServiceServicer_to_server(
            ImmutableLogServicer(self.log), server
        )
        domain_pb2_grpc.add_DomainServiceServicer_to_server(
            domain.KernelDomainServicer(
                SERVICE,
                "0.1.0",
                CAPABILITIES,
                log_actions(self.log),
                event_recorder(self.log, self.verifier),
                EVENT_PATTERNS,
                on_events=batch_recorder(self.log, self.verifier),
            ),
            server,
        )
        return [SERVICE_NAME, domain.SERVICE_NAME, *mounted(self.peer_health, server)]

    async def start(self) -> None:
        await self.log.open()
        registration = self.config.registration
        if registration is not None:
            registration = dataclasses.replace(registration, public_key=self.log.public_key)
            self.spawn(
                keep_registered(registration, self.bound_port, self.peer_health),
                "immutable-log-registration",
            )
            if self.config.eventbus_address:
                # The bus pushes to the log through the registry, so subscribing only makes
                # sense once the log registers. Creation is idempotent and retried while the
                # bus is down; each delivered event is appended once (see actions.py).
                self._bus = channel(self.config.eventbus_address)
                self.subscriptions = Subscriptions(self._bus, SERVICE, EVENT_PATTERNS)
                self.spawn(self.subscriptions.run(), "immutable-log-subscriptions")

    async def stop(self) -> None:
        if self._bus is not None:
            await self._bus.close()
            self._bus = None
        await self.keys.close()
        await self.log.close()
