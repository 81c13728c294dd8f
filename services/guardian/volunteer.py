"""Guardian volunteers to restart a domain its peers confirmed down (health federation).

The seed's sequence: peers notice (`domain.suspected`), a quorum agrees
(`domain.down_confirmed`, published by the registry with the observers that confirmed), a
volunteer restarts the domain, and everyone is told it is back (`domain.recovered`, once
the restarted domain refutes the old suspicion with its new incarnation). Guardian is the
volunteer for the components it runs: it follows `domain.down_confirmed` on the event bus
as a durable consumer (so a confirmation published while it was away is still handled),
records `healing.volunteered`, and heals through `Healer.heal`, the governed path every
heal takes: governance is asked for `heal:restart_component` on the component, with
Guardian as the actor. Confirmations from any source other than the registry, and
domains Guardian does not run, are left alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc
from google.protobuf import json_format

from grace.eventbus.v1 import event_pb2, eventbus_pb2, eventbus_pb2_grpc
from services.common.channels import channel
from services.common.errors import GraceError
from services.guardian.journal import Journal
from services.guardian.playbooks import RESTART_COMPONENT, Healer

log = logging.getLogger(__name__)

DOWN_CONFIRMED = "domain.down_confirmed"
CONSUMER = "guardian-federation"
ACTOR = "guardian"
COORDINATOR = "registry"
RETRY_S = 2.0


class RecoveryVolunteer:
    """Restarts the components whose domains the federation confirmed down.

    Args:
        healer: Guardian's healer (governed heals).
        journal: Where the volunteering is recorded.
        components: Names of the components Guardian runs.
        bus_address: Returns the event bus `host:port` (it may move).
    """

    def __init__(
        self,
        healer: Healer,
        journal: Journal,
        components: Callable[[], list[str]],
        bus_address: Callable[[], str],
    ) -> None:
        self.healer = healer
        self.journal = journal
        self._components = components
        self._bus_address = bus_address
        self.handled = 0

    async def handle(self, event: event_pb2.Event) -> bool:
        """Heals the component a confirmation names; True when a heal was attempted."""
        if event.event_type != DOWN_CONFIRMED or event.source_domain != COORDINATOR:
            return False
        data = json_format.MessageToDict(event.data)
        name = str(data.get("domain_id", ""))
        if name not in self._components():
            log.info("%s is confirmed down but not run by this Guardian; not volunteering", name)
            return False
        confirming = ", ".join(str(o) for o in data.get("confirming", []))
        await self.journal.decide(
            "healing.volunteered",
            name,
            confirmed_by=confirming,
            incarnation=str(data.get("incarnation", "")),
        )
        self.handled += 1
        try:
            result = await self.healer.heal(
                name,
                RESTART_COMPONENT,
                actor=ACTOR,
                reason=f"{DOWN_CONFIRMED}: confirmed by {confirming}",
            )
        except GraceError as exc:
            # Refused by governance or impossible now; the refusal is journaled by the
            # healer. Peers keep reporting, and the supervisor's own probes still apply.
            log.warning("volunteered restart of %s not done: %s", name, exc)
            return True
        log.info("volunteered restart of %s: %s", name, result.message)
        return True

    async def run(self) -> None:
        """Follows confirmations on the bus until cancelled, reconnecting while it is away."""
        while True:
            address = self._bus_address()
            try:
                async with channel(address) as chan:
                    await self._follow(eventbus_pb2_grpc.EventBusServiceStub(chan))
            except (grpc.aio.AioRpcError, OSError) as exc:
                log.debug("event bus at %s not followed (%s); retrying", address, exc)
            await asyncio.sleep(RETRY_S)

    async def _follow(self, stub: eventbus_pb2_grpc.EventBusServiceAsyncStub) -> None:
        stream = stub.Subscribe(
            eventbus_pb2.SubscribeRequest(
                pattern=DOWN_CONFIRMED, consumer=CONSUMER, source_domain=COORDINATOR
            )
        )
        async for message in stream:
            for event in message.events:
                try:
                    await self.handle(event)
                except Exception:
                    log.exception("handling %s %s failed", event.event_type, event.subject)
            if message.events:
                await stub.Ack(
                    eventbus_pb2.AckRequest(consumer=CONSUMER, sequence=message.events[-1].sequence)
                )
