"""The domain router spreads calls over a domain's instances and skips a dead one, with
the instances registered in a real registry and the domain calls faked per address."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from services.common.domain_router import CallError, DomainRouter, InstanceSpreader, Target
from services.registry.model import Metrics, Registration
from services.registry.registry import Registry
from services.registry.server import RegistryServer
from tests.registry.conftest import registry_config
from tests.support import ManualClock, serving

DEAD = "127.0.0.1:9002"


class FakeDomain:
    """The stub of one instance: counts its calls, or is down."""

    def __init__(self, address: str, calls: collections.Counter[str], down: set[str]) -> None:
        self.address = address
        self._calls = calls
        self._down = down

    async def Execute(self, request: Any) -> str:
        if self.address in self._down:
            self._calls[f"{self.address} (down)"] += 1
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down"
            )
        self._calls[self.address] += 1
        return self.address


class Routed:
    def __init__(self, router: DomainRouter, registry: Registry) -> None:
        self.router = router
        self.registry = registry
        self.calls: collections.Counter[str] = collections.Counter()
        self.down: set[str] = set()
        router.stub = lambda address: FakeDomain(address, self.calls, self.down)  # type: ignore[method-assign, assignment, return-value]

    async def call(self, kind: str = "domain", key: str = "ai_domain") -> str:
        async def invoke(stub: Any, domain_id: str) -> str:
            return str(await stub.Execute(domain_id))

        candidate, answer = await self.router.call(kind, key, invoke)
        assert candidate.address == answer
        return str(answer)


@pytest.fixture
async def routed(tmp_path: Path) -> AsyncIterator[Routed]:
    service = RegistryServer(registry_config(tmp_path), clock=ManualClock())
    async with serving(service.config.server, service) as (_, chan):
        for port in (9001, 9002):
            await service.registry.register(
                Registration(
                    "ai_domain", "127.0.0.1", port, ("ml",), instance_id=f"127.0.0.1:{port}"
                )
            )
        router = DomainRouter(chan, cache_ttl_s=60.0)
        yield Routed(router, service.registry)
        await router.close()


async def test_calls_alternate_over_two_equal_instances(routed: Routed) -> None:
    answers = [await routed.call() for _ in range(6)]

    assert routed.calls == {"127.0.0.1:9001": 3, "127.0.0.1:9002": 3}
    assert answers[0] != answers[1]  # Interleaved, not bunched.


async def test_a_capability_call_spreads_over_the_chosen_domains_instances(
    routed: Routed,
) -> None:
    for _ in range(4):
        await routed.call("capability", "ml")

    assert routed.calls == {"127.0.0.1:9001": 2, "127.0.0.1:9002": 2}


async def test_a_dead_instance_is_retried_on_the_other_then_passed_over(routed: Routed) -> None:
    routed.down.add(DEAD)

    answers = [await routed.call() for _ in range(4)]

    assert answers == ["127.0.0.1:9001"] * 4  # No call failed.
    # The dead one was tried once, then passed over although the registry still lists it.
    assert routed.calls == {"127.0.0.1:9001": 4, f"{DEAD} (down)": 1}


async def test_a_call_fails_unavailable_only_when_every_instance_is_down(routed: Routed) -> None:
    routed.down.update({"127.0.0.1:9001", DEAD})

    with pytest.raises(CallError) as failed:
        await routed.call()

    assert failed.value.unreachable
    assert routed.calls == {"127.0.0.1:9001 (down)": 1, f"{DEAD} (down)": 1}


async def test_an_instance_whose_lease_lapsed_is_not_called(routed: Routed) -> None:
    clock = routed.registry.store.clock
    assert isinstance(clock, ManualClock)
    clock.advance(20)
    await routed.registry.heartbeat("ai_domain", instance_id="127.0.0.1:9001")
    clock.advance(15)
    await routed.registry.sweep()  # The second's lease lapsed; the first's holds.

    for _ in range(3):
        await routed.call()

    assert routed.calls == {"127.0.0.1:9001": 3}


def test_instances_get_calls_in_proportion_to_their_scores() -> None:
    spreader = InstanceSpreader(cooldown_s=5.0, clock=lambda: 0.0)
    target = Target("d", (("a:1", 0.9), ("b:1", 0.3)))

    firsts = collections.Counter(spreader.order(target)[0] for _ in range(8))

    assert firsts == {"a:1": 6, "b:1": 2}
    assert spreader.order(target) in (["a:1", "b:1"], ["b:1", "a:1"])


async def test_a_degraded_instance_gets_fewer_calls(routed: Routed) -> None:
    await routed.registry.heartbeat(
        "ai_domain",
        Metrics(load=1.0, latency_ms=1000, success_rate=0.1),
        degraded=True,
        instance_id=DEAD,
    )
    for _ in range(12):
        await routed.call()

    assert routed.calls["127.0.0.1:9001"] > routed.calls[DEAD] > 0
