"""Finding and calling the domain that runs a step (orchestrator) or a firing (scheduler).

A step names a `domain_id` or a `capability`. Addresses come from the registry
(GetDomain, FindByCapability ranked best first) and are cached for a few seconds, so the
hot path costs no registry call; an UNAVAILABLE answer drops the cached entry and moves on
to the next candidate. Channels to domains are opened once per address and reused.

A domain may run as several instances (the registry lists its live ones); calls to it are
spread over them (see `InstanceSpreader`), and one that finds an instance UNAVAILABLE
tries the domain's other instances before the next domain. That is the fallback the
router always made on UNAVAILABLE, now also between instances of one domain: the call is
the same request with the same idempotency key, and a domain's instances that share their
store (one database) answer a repeated key with the stored result.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
from google.protobuf import json_format, struct_pb2

from grace.domain.v1 import domain_pb2_grpc
from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.channels import channel

# Codes after which trying again cannot help (see DomainService in domain.proto).
PERMANENT_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)
_REGISTRY_TIMEOUT_S = 3.0

JsonDict: TypeAlias = dict[str, Any]


class CallError(Exception):
    """A domain call failed.

    Attributes:
        message: What went wrong, with the domain and the status.
        retryable: Whether another attempt may succeed.
        code: The gRPC status, when there was one.
        domain_id: The domain the call reached, or "" when none was reached.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        code: grpc.StatusCode | None = None,
        domain_id: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.code = code
        self.domain_id = domain_id

    @property
    def unreachable(self) -> bool:
        """True when nothing answered: the domain, or the registry that finds it, is down."""
        return self.retryable and self.code in (None, grpc.StatusCode.UNAVAILABLE)


class RegistryUnavailable(Exception):
    """The registry could not be reached."""


@dataclass(frozen=True)
class Candidate:
    """A domain that can run a step, at the address of one of its instances."""

    domain_id: str
    address: str


@dataclass(frozen=True)
class Target:
    """A domain as resolved: its live instances' addresses with their routing weights."""

    domain_id: str
    instances: tuple[tuple[str, float], ...]


def _target(domain: registry_pb2.Domain) -> Target:
    live = (registry_pb2.DOMAIN_STATUS_HEALTHY, registry_pb2.DOMAIN_STATUS_DEGRADED)
    instances = tuple(
        # A registry that sends no score gives every instance the same weight.
        (i.address, i.score if i.score > 0 else 1.0)
        for i in domain.instances
        if i.status in live
    )
    # A registry without instances, or a domain whose instances all lapsed a moment ago:
    # the domain's own address, as before.
    return Target(domain.domain_id, instances or ((domain.address, 1.0),))


class InstanceSpreader:
    """Orders a domain's instances for each call: the one picked to go first, then the
    others (the fallbacks on UNAVAILABLE), best weight first.

    The pick is smooth weighted round-robin (as in nginx), weighted by the registry's
    per-instance score: each call adds every instance's weight to its credit, picks the
    instance with the most credit and takes the total weight from it. Over any run of
    calls each instance gets its share of the weight, evenly interleaved (equal scores
    alternate strictly), and the order is deterministic. Random choice by score would
    give the same shares on average but bunch calls on one instance now and then; plain
    round-robin would ignore that an instance reports itself loaded or degraded.

    An instance that answered UNAVAILABLE is passed over for `cooldown_s` (tried last),
    since the registry keeps listing a dead instance until its lease lapses.
    """

    def __init__(self, cooldown_s: float, clock: Callable[[], float]) -> None:
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._credit: dict[str, dict[str, float]] = {}
        self._down_until: dict[str, float] = {}

    def order(self, target: Target) -> list[str]:
        """The addresses of `target` in the order to try them."""
        if len(target.instances) == 1:
            return [target.instances[0][0]]
        now = self._clock()
        up = [p for p in target.instances if self._down_until.get(p[0], 0.0) <= now]
        down = [p for p in target.instances if p not in up]
        first: list[str] = []
        if up:
            known = self._credit.get(target.domain_id, {})
            credit = {a: known.get(a, 0.0) + w for a, w in up}
            picked = max(up, key=lambda p: (credit[p[0]], p[0]))[0]
            credit[picked] -= sum(w for _, w in up)
            self._credit[target.domain_id] = credit
            first = [picked]
        rest = sorted((p for p in up if p[0] not in first), key=lambda p: (-p[1], p[0]))
        return first + [a for a, _ in rest] + [a for a, _ in down]

    def failed(self, address: str) -> None:
        """Passes over `address` for a while (it answered UNAVAILABLE)."""
        self._down_until[address] = self._clock() + self._cooldown_s


def to_struct(value: JsonDict) -> struct_pb2.Struct:
    """A Struct holding a JSON object."""
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def from_struct(struct: struct_pb2.Struct) -> JsonDict:
    """The JSON object a Struct holds."""
    return json_format.MessageToDict(struct)


class DomainRouter:
    """Resolves step targets through the registry and calls domains.

    Args:
        registry: Channel to the registry.
        cache_ttl_s: How long a resolved target is reused without asking the registry.
        clock: Monotonic clock (injectable for tests).
    """

    def __init__(
        self,
        registry: grpc.aio.Channel,
        *,
        cache_ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry_pb2_grpc.RegistryServiceStub(registry)
        self._ttl = cache_ttl_s
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, list[Target]]] = {}
        self.spreader = InstanceSpreader(cache_ttl_s, clock)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, domain_pb2_grpc.DomainServiceStub] = {}

    async def close(self) -> None:
        """Closes the channels to domains."""
        channels, self._channels, self._stubs = self._channels, {}, {}
        await asyncio.gather(*(c.close() for c in channels.values()), return_exceptions=True)

    def stub(self, address: str) -> domain_pb2_grpc.DomainServiceStub:
        """The cached stub of the domain at `address`."""
        stub = self._stubs.get(address)
        if stub is None:
            chan = channel(address)
            self._channels[address] = chan
            stub = self._stubs[address] = domain_pb2_grpc.DomainServiceStub(chan)
        return stub

    def forget(self, kind: str, key: str) -> None:
        """Drops a cached resolution (after the target turned out unavailable)."""
        self._cache.pop((kind, key), None)

    async def resolve(self, kind: str, key: str) -> list[Candidate]:
        """Candidates for `kind` "domain" (an id) or "capability": the domains best first,
        each as its instances in the order to try them (see `InstanceSpreader`).

        Raises:
            RegistryUnavailable: The registry did not answer.
        """
        return [
            Candidate(target.domain_id, address)
            for target in await self._targets(kind, key)
            for address in self.spreader.order(target)
        ]

    async def _targets(self, kind: str, key: str) -> list[Target]:
        cached = self._cache.get((kind, key))
        now = self._clock()
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            if kind == "domain":
                found = await self._registry.GetDomain(
                    registry_pb2.GetDomainRequest(domain_id=key), timeout=_REGISTRY_TIMEOUT_S
                )
                targets = [_target(found.domain)]
            else:
                ranked = await self._registry.FindByCapability(
                    registry_pb2.FindByCapabilityRequest(capability=key),
                    timeout=_REGISTRY_TIMEOUT_S,
                )
                targets = [_target(r.domain) for r in ranked.domains]
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                targets = []
            else:
                raise RegistryUnavailable(f"registry: {exc.code().name}: {exc.details()}") from exc
        self._cache[(kind, key)] = (now + self._ttl, targets)
        return targets

    async def unknown_domains(self, domain_ids: list[str]) -> list[str] | None:
        """The ids among `domain_ids` the registry does not know; None when it is down."""
        unknown: list[str] = []
        try:
            for domain_id in domain_ids:
                if not await self.resolve("domain", domain_id):
                    unknown.append(domain_id)
        except RegistryUnavailable:
            return None
        return unknown

    async def call(
        self,
        kind: str,
        key: str,
        invoke: Callable[[domain_pb2_grpc.DomainServiceStub, str], Any],
    ) -> tuple[Candidate, Any]:
        """Calls the best candidate, falling back to the next one on UNAVAILABLE (the
        domain's other instances first, then the next domain).

        Args:
            kind: "domain" or "capability".
            key: The domain id or the capability.
            invoke: Makes the call given a stub and the candidate's domain id.

        Returns:
            The candidate that answered (its id and address) and its response.

        Raises:
            CallError: Every candidate failed, or the one reached answered an error.
        """
        try:
            candidates = await self.resolve(kind, key)
        except RegistryUnavailable as exc:
            raise CallError(str(exc), retryable=True) from exc
        if not candidates:
            what = "domain" if kind == "domain" else "live domain offering capability"
            raise CallError(f"no {what} {key!r} in the registry", retryable=True)
        last: grpc.aio.AioRpcError | None = None
        for candidate in candidates:
            try:
                response = await invoke(self.stub(candidate.address), candidate.domain_id)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    last = exc
                    self.forget(kind, key)
                    self.spreader.failed(candidate.address)
                    continue
                raise _answered(candidate, exc) from exc
            return candidate, response
        assert last is not None
        raise CallError(
            f"{key}: every candidate is unavailable ({last.details()})",
            retryable=True,
            code=grpc.StatusCode.UNAVAILABLE,
        )

    async def call_at(
        self,
        known: Candidate,
        invoke: Callable[[domain_pb2_grpc.DomainServiceStub, str], Any],
    ) -> Any:
        """Calls a domain at the address it was reached at before, without the registry.

        Compensations go to the domain that ran the step: its address was remembered with
        the step, so a registry outage does not keep them from domains that are up. Only
        when nothing answers there (the domain moved) is the registry asked again.

        Raises:
            CallError: The domain answered an error, or it cannot be reached at its old
                address and the registry has no other (or is down).
        """
        try:
            return await invoke(self.stub(known.address), known.domain_id)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise _answered(known, exc) from exc
            first = exc
            self.spreader.failed(known.address)
        try:
            _, response = await self.call("domain", known.domain_id, invoke)
        except CallError as exc:
            if exc.unreachable:
                raise CallError(
                    f"{known.domain_id}: unavailable at {known.address} ({first.details()}); "
                    f"then {exc.message}",
                    retryable=True,
                    code=grpc.StatusCode.UNAVAILABLE,
                ) from exc
            raise
        return response


def _answered(candidate: Candidate, exc: grpc.aio.AioRpcError) -> CallError:
    return CallError(
        f"{candidate.domain_id}: {exc.code().name}: {exc.details()}",
        retryable=exc.code() not in PERMANENT_CODES,
        code=exc.code(),
        domain_id=candidate.domain_id,
    )
