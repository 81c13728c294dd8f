"""A domain's signing identity: its Ed25519 key and its registration with the trust kernel.

The key lives in `<data dir>/<domain>.key` (PEM, created 0600 on first start, see
`services.common.signing`). At start the domain registers the public key with the trust
kernel with proof of possession (CreateChallenge, then RegisterIdentity signed over the
registration statement); registering the same key again is a no-op, so this runs at every
start. While the trust kernel is down it retries with backoff.

Events are signed only once the trust kernel holds this key (`on_registered` is called):
the bus treats a signed event from a source with no registered key as forged, and an
unsigned one as open, so signing earlier would only get events flagged or rejected. When
the trust kernel holds another active key for the domain (its data dir was replaced), the
domain cannot prove it owns that identity: it logs an error, stops trying and publishes
unsigned (the bus then flags or rejects its events until the key is rotated).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc

from grace.kernels.trust.v1 import trust_pb2, trust_pb2_grpc
from services.common import signing
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
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._sleep = sleep
        self.registered = asyncio.Event()
        self.refused = ""

    async def run(self) -> None:
        """Registers (retrying while the trust kernel is unreachable), then returns."""
        backoff = self.backoff_initial_s
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
                log.warning(
                    "registering key %s with the trust kernel failed (%s); retrying in %.1fs",
                    self.key.key_id,
                    exc.code().name,
                    backoff,
                )
                await self._sleep(backoff)
                backoff = min(self.backoff_max_s, backoff * 2)
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
