"""Fixtures of the trust tests: a kernel on each backend, and domains holding keys."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from services.common.signing import SigningKey
from services.common.storage import Database
from services.kernels.trust import statements
from services.kernels.trust.model import Level
from services.kernels.trust.scoring import Behaviour, BehaviourUnavailable
from services.kernels.trust.store import TrustStore
from services.kernels.trust.trust import TrustKernel, TrustSettings
from tests.conftest import DatabaseTarget
from tests.support import ManualClock


@dataclass
class RecordedBehaviour:
    """A behaviour source the test sets: known domains, or down."""

    known: dict[str, Behaviour] = field(default_factory=dict)
    down: bool = False

    async def observe(self, domain_id: str) -> Behaviour | None:
        if self.down:
            raise BehaviourUnavailable("registry unreachable (UNAVAILABLE)")
        return self.known.get(domain_id)


@dataclass
class Domain:
    """A domain with its private key, acting through the kernel as a client would."""

    name: str
    key: SigningKey = field(default_factory=SigningKey.generate)

    @property
    def public(self) -> bytes:
        return self.key.public_key

    @property
    def key_id(self) -> str:
        return self.key.key_id

    async def register(self, kernel: TrustKernel) -> None:
        challenge, _ = kernel.create_challenge(self.name)
        body = statements.registration(self.name, self.public, challenge)
        signature = statements.sign(self.key, statements.REGISTRATION, body)
        await kernel.register(self.name, self.public, challenge, signature)

    async def certify(self, kernel: TrustKernel, other: Domain, level: Level, at: int) -> bool:
        body = statements.certification(self.name, other.name, level.value, at)
        signature = statements.sign(self.key, statements.CERTIFICATION, body)
        return (await kernel.establish(self.name, other.name, level, at, signature))[1]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def behaviour() -> RecordedBehaviour:
    return RecordedBehaviour()


@pytest.fixture
async def kernel(
    database: DatabaseTarget, clock: ManualClock, behaviour: RecordedBehaviour
) -> AsyncIterator[TrustKernel]:
    store = TrustStore(Database(database.url, schema=database.schema))
    kernel = TrustKernel(store, TrustSettings(roots=("core",)), behaviour, clock)
    await kernel.open()
    try:
        yield kernel
    finally:
        await store.close()
