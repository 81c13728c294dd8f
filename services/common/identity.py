"""A signing identity: an Ed25519 key and its registration with the trust kernel.

Used by SDK domains and by Grace's own components alike (`ComponentIdentity`), so every
event they publish can be verified by the bus. The key lives in `<data dir>/<id>.key`
(PEM, created 0600 on first start, see `services.common.signing`). At start the owner
registers the public key with the trust kernel with proof of possession (CreateChallenge,
then RegisterIdentity signed over the registration statement); registering the same key
again is a no-op, so this runs at every start. While the trust kernel is down it retries
with backoff.

Events are signed only once the trust kernel holds this key (`on_registered` is called):
the bus treats a signed event from a source with no registered key as forged, and an
unsigned one as open, so signing earlier would only get events flagged or rejected. When
the trust kernel holds another active key for the id (its data dir was replaced), or
refuses a reserved id (`services.kernels.trust.claims`), the owner cannot prove it owns
that identity: it logs an error, stops trying and publishes unsigned (the bus, in its
default `reject` mode, then refuses its events, which wait in the outbox until the key is
rotated or revoked).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from grace.kernels.trust.v1 import trust_pb2, trust_pb2_grpc
from services.common import signing
from services.common.backoff import Backoff, Retries
from services.common.bus_client import EventBusPublisher
from services.common.channels import channel
from services.common.components import component_key_path
from services.common.config import ServerConfig, peer_address
from services.kernels.trust import statements

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 5.0

# Codes after which asking again cannot succeed: the trust kernel refused this key.
_REFUSALS = (
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
)


class IdentityRegistrar:
    """Registers a domain's key with the trust kernel, then reports it usable.

    Args:
        channel: Channel to the trust kernel.
        domain_id: The domain.
        key: The domain's signing key.
        on_registered: Called once the trust kernel holds the key as the domain's active key.
        backoff_initial_s: First wait after a failure.
        backoff_max_s: Longest wait between attempts.
        sleep: Injectable sleep for tests.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        domain_id: str,
        key: signing.SigningKey,
        on_registered: Callable[[], None],
        *,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._stub = trust_pb2_grpc.TrustServiceStub(channel)
        self.domain_id = domain_id
        self.key = key
        self._on_registered = on_registered
        self.backoff = Backoff(backoff_initial_s, max_s=backoff_max_s)
        self._sleep = sleep
        self.registered = asyncio.Event()
        self.refused = ""

    async def run(self) -> None:
        """Registers (retrying while the trust kernel is unreachable), then returns."""
        retries = Retries(self.backoff)
        while True:
            try:
                created = await self._register_once()
            except grpc.aio.AioRpcError as exc:
                if exc.code() in _REFUSALS:
                    self.refused = f"{exc.code().name}: {exc.details()}"
                    log.error(
                        "the trust kernel refused key %s of %s (%s); events are sent unsigned",
                        self.key.key_id,
                        self.domain_id,
                        self.refused,
                    )
                    return
                wait = retries.failed()
                log.warning(
                    "registering key %s with the trust kernel failed (%s); retrying in %.1fs",
                    self.key.key_id,
                    exc.code().name,
                    wait,
                )
                await self._sleep(wait)
                continue
            log.info(
                "%s key %s of %s with the trust kernel; signing events",
                "registered" if created else "confirmed",
                self.key.key_id,
                self.domain_id,
            )
            self._on_registered()
            self.registered.set()
            return

    async def _register_once(self) -> bool:
        challenge = await self._stub.CreateChallenge(
            trust_pb2.CreateChallengeRequest(domain_id=self.domain_id), timeout=CALL_TIMEOUT_S
        )
        body = statements.registration(self.domain_id, self.key.public_key, challenge.challenge)
        response = await self._stub.RegisterIdentity(
            trust_pb2.RegisterIdentityRequest(
                domain_id=self.domain_id,
                public_key=self.key.public_key,
                challenge=challenge.challenge,
                signature=statements.sign(self.key, statements.REGISTRATION, body),
            ),
            timeout=CALL_TIMEOUT_S,
        )
        return bool(response.created)


class ComponentIdentity:
    """Has a Grace component's published events signed once the trust kernel holds its key.

    The key is the one Grace provisions for the component (`<data dir>/<id>.key`, see
    `services.common.components`); the trust kernel accepts it for the component's
    reserved id. Until the registration is confirmed the publisher sends unsigned, which
    the bus accepts from a source with no identity yet; from then on every event is signed,
    and the bus refuses unsigned or forged ones under this id.

    Args:
        component: The component's id (its events' `source_domain`).
        key_path: Its signing key (created on first start).
        trust_address: `host:port` of the trust kernel.
        publisher: The publisher to have sign; a test double (not an `EventBusPublisher`)
            is left alone and nothing is registered.
        on_signing: Called once signing starts (for example to wake an outbox relay).
    """

    def __init__(
        self,
        component: str,
        key_path: Path,
        trust_address: str,
        publisher: object,
        on_signing: Callable[[], None] | None = None,
    ) -> None:
        self.component = component
        self.key_path = key_path
        self.key: signing.SigningKey | None = None
        self.trust_address = trust_address
        self.publisher = publisher
        self._on_signing = on_signing
        self._channel: grpc.aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None
        self.registrar: IdentityRegistrar | None = None

    @classmethod
    def of(
        cls,
        component: str,
        server: ServerConfig,
        publisher: object,
        on_signing: Callable[[], None] | None = None,
    ) -> ComponentIdentity:
        """The identity of `component` with the key Grace provisions for it in the server's
        data dir, registered with the trust kernel at `GRACE_TRUST_ADDR`."""
        return cls(
            component,
            component_key_path(server.data_dir, component),
            peer_address(server.env, "trust"),
            publisher,
            on_signing,
        )

    def start(self) -> None:
        """Loads (or creates) the key and starts registering in the background (call from a
        running loop)."""
        if not isinstance(self.publisher, EventBusPublisher):
            return
        self.key = signing.load_or_create_key(self.key_path)
        self._channel = channel(self.trust_address)
        self.registrar = IdentityRegistrar(self._channel, self.component, self.key, self._sign)
        self._task = asyncio.create_task(self.registrar.run(), name=f"{self.component}-identity")

    def _sign(self) -> None:
        if isinstance(self.publisher, EventBusPublisher) and self.key is not None:
            self.publisher.signer = self.key
        if self._on_signing is not None:
            self._on_signing()

    async def stop(self) -> None:
        """Stops registering and closes the channel."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
