"""The health federation over gRPC: `PeerHealthService`, the registry as coordinator, and
`PeerHealth`, which SDK domains and kernels mount to take part.

A member serves `grace.domain.v1.PeerHealthService` beside `DomainService`, registers with
`federation=v1` metadata (`MEMBER_METADATA`) so the others know they may ping it, and runs
`Member` rounds (see `services.common.membership`) against the registry.

Settings (`PeerHealthSettings.from_env`):

- `GRACE_FEDERATION`: take part (true) or not (false).
- `GRACE_FEDERATION_OBSERVERS`: members each member probes, so observers per member (3).
- `GRACE_FEDERATION_INDIRECT`: helpers asked for an indirect probe (3).
- `GRACE_FEDERATION_INTERVAL_S`: time between protocol rounds (1).
- `GRACE_FEDERATION_PROBE_TIMEOUT_S`: direct ping deadline (0.5).
- `GRACE_FEDERATION_SUSPICION_TIMEOUT_S`: the shortest time a suspicion waits for a
  refutation before it is confirmed, once every other observer of the suspect agrees (2).
- `GRACE_FEDERATION_SUSPICION_MAX_TIMEOUT_S`: the longest, for a suspicion no other
  observer shares (6); the wait shrinks on a log scale between the two (Lifeguard).
- `GRACE_FEDERATION_REFRESH_S`: how often membership is read from the registry (5).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import grpc

from grace.domain.v1 import peer_health_pb2, peer_health_pb2_grpc
from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.channels import channel
from services.common.config import EnvReader
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.membership import Member, MemberSettings, OpenSuspicion, Unreachable
from services.common.observers import (
    DEFAULT_OBSERVERS,
    MEMBER_METADATA_KEY,
    MEMBER_METADATA_VALUE,
)
from services.common.timestamps import from_duration, to_duration

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
SERVICE_NAME = peer_health_pb2.DESCRIPTOR.services_by_name["PeerHealthService"].full_name
MEMBER_METADATA = {MEMBER_METADATA_KEY: MEMBER_METADATA_VALUE}
REGISTRY_TIMEOUT_S = 5.0
MIN_PROBE_TIMEOUT_S = 0.01
MAX_PROBE_TIMEOUT_S = 10.0
DEFAULT_PROBE_TIMEOUT_S = 1.0
MAX_CHANNELS = 256

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeerHealthSettings:
    """Whether a member takes part, and its protocol tunables."""

    enabled: bool = True
    member: MemberSettings = field(default_factory=MemberSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> PeerHealthSettings:
        """Reads the `GRACE_FEDERATION_*` variables (see the module docstring)."""
        reader = EnvReader(env)
        interval = reader.number("GRACE_FEDERATION_INTERVAL_S", 1.0, minimum=0.05, maximum=60)
        probe = reader.number(
            "GRACE_FEDERATION_PROBE_TIMEOUT_S", 0.5, minimum=MIN_PROBE_TIMEOUT_S, maximum=10
        )
        shortest = reader.number(
            "GRACE_FEDERATION_SUSPICION_TIMEOUT_S", 2.0, minimum=0.1, maximum=600
        )
        return cls(
            enabled=reader.flag("GRACE_FEDERATION", True),
            member=MemberSettings(
                observers=reader.integer(
                    "GRACE_FEDERATION_OBSERVERS", DEFAULT_OBSERVERS, minimum=1, maximum=16
                ),
                indirect=reader.integer("GRACE_FEDERATION_INDIRECT", 3, minimum=0, maximum=16),
                interval_s=interval,
                probe_timeout_s=probe,
                indirect_timeout_s=min(MAX_PROBE_TIMEOUT_S, probe * 2),
                suspicion_timeout_s=shortest,
                suspicion_max_timeout_s=reader.number(
                    "GRACE_FEDERATION_SUSPICION_MAX_TIMEOUT_S",
                    max(shortest, 6.0),
                    minimum=shortest,
                    maximum=3600,
                ),
                refresh_s=reader.number(
                    "GRACE_FEDERATION_REFRESH_S", 5.0, minimum=0.1, maximum=600
                ),
            ),
        )


class GrpcProber:
    """Reaches members over gRPC, one cached channel per address."""

    def __init__(self, member_id: str) -> None:
        self.member_id = member_id
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _stub(self, address: str) -> peer_health_pb2_grpc.PeerHealthServiceAsyncStub:
        chan = self._channels.get(address)
        if chan is None:
            if len(self._channels) >= MAX_CHANNELS:
                # Members come and go; drop the oldest channel rather than grow forever.
                oldest = next(iter(self._channels))
                asyncio.get_running_loop().create_task(self._channels.pop(oldest).close())
            chan = channel(address, fast_reconnect=True)
            self._channels[address] = chan
        return peer_health_pb2_grpc.PeerHealthServiceStub(chan)

    async def ping(
        self, address: str, target_id: str, suspected_incarnation: int, timeout_s: float
    ) -> int:
        if not address:
            raise Unreachable(f"{target_id} has no address")
        request = peer_health_pb2.PingRequest(
            domain_id=target_id,
            from_id=self.member_id,
            suspected_incarnation=suspected_incarnation,
        )
        try:
            response = await self._stub(address).Ping(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise Unreachable(f"{target_id}: {exc.code().name}") from exc
        return int(response.incarnation)

    async def probe_on_behalf(
        self,
        helper_address: str,
        helper_id: str,
        target_id: str,
        target_address: str,
        suspected_incarnation: int,
        timeout_s: float,
    ) -> int | None:
        request = peer_health_pb2.ProbeOnBehalfRequest(
            domain_id=helper_id,
            target_id=target_id,
            target_address=target_address,
            from_id=self.member_id,
            timeout=to_duration(timeout_s / 2),
            suspected_incarnation=suspected_incarnation,
        )
        try:
            response = await self._stub(helper_address).ProbeOnBehalf(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise Unreachable(f"helper {helper_id}: {exc.code().name}") from exc
        return int(response.incarnation) if response.reachable else None

    async def close(self) -> None:
        """Closes every channel."""
        for chan in self._channels.values():
            await chan.close()
        self._channels.clear()


class RegistryCoordinator:
    """The registry's federation RPCs, for one member; `attach` gives it the channel (the
    servicer is mounted before the service opens its channels)."""

    def __init__(self, member_id: str) -> None:
        self.member_id = member_id
        self._stub_: registry_pb2_grpc.RegistryServiceAsyncStub | None = None

    def attach(self, registry: grpc.aio.Channel) -> None:
        """Uses `registry` from now on."""
        self._stub_ = registry_pb2_grpc.RegistryServiceStub(registry)

    @property
    def _stub(self) -> registry_pb2_grpc.RegistryServiceAsyncStub:
        if self._stub_ is None:
            raise RuntimeError("the registry channel is not attached yet")
        return self._stub_

    async def members(self) -> dict[str, str]:
        found: dict[str, str] = {}
        token = ""
        while True:
            response = await self._stub.ListDomains(
                registry_pb2.ListDomainsRequest(page_size=1000, page_token=token),
                timeout=REGISTRY_TIMEOUT_S,
            )
            for domain in response.domains:
                if domain.metadata.get(MEMBER_METADATA_KEY):
                    found[domain.domain_id] = domain.address
            token = response.next_page_token
            if not token:
                return found

    async def suspected(self) -> dict[str, OpenSuspicion]:
        found: dict[str, OpenSuspicion] = {}
        token = ""
        while True:
            response = await self._stub.ListSuspicions(
                registry_pb2.ListSuspicionsRequest(page_size=1000, page_token=token),
                timeout=REGISTRY_TIMEOUT_S,
            )
            for suspicion in response.suspicions:
                found[suspicion.suspect_id] = OpenSuspicion(
                    suspicion.incarnation, frozenset(suspicion.suspecting)
                )
            token = response.next_page_token
            if not token:
                return found

    async def report(self, suspect_id: str, incarnation: int, confirmed: bool) -> int | None:
        response = await self._stub.ReportSuspicion(
            registry_pb2.ReportSuspicionRequest(
                observer_id=self.member_id,
                suspect_id=suspect_id,
                incarnation=incarnation,
                confirmed=confirmed,
            ),
            timeout=REGISTRY_TIMEOUT_S,
        )
        return None if response.HasField("suspicion") else int(response.current_incarnation)

    async def refute(self, incarnation: int) -> int:
        response = await self._stub.Refute(
            registry_pb2.RefuteRequest(domain_id=self.member_id, incarnation=incarnation),
            timeout=REGISTRY_TIMEOUT_S,
        )
        return int(response.incarnation)


class PeerHealthServicer(peer_health_pb2_grpc.PeerHealthServiceServicer):
    """Serves `grace.domain.v1.PeerHealthService` for one member."""

    def __init__(self, member: Member, refute: asyncio.Event) -> None:
        self._member = member
        self._refute = refute

    def _check_target(self, domain_id: str) -> None:
        if domain_id and domain_id != self._member.member_id:
            raise FailedPrecondition(
                f"ping for member {domain_id!r} reached member {self._member.member_id!r}"
            )

    async def Ping(
        self, request: peer_health_pb2.PingRequest, context: Context
    ) -> peer_health_pb2.PingResponse:
        self._check_target(request.domain_id)
        if request.suspected_incarnation < 0:
            raise InvalidArgument("suspected_incarnation", "must not be negative")
        before = self._member.incarnation
        incarnation = self._member.on_ping(request.suspected_incarnation)
        if incarnation != before:
            self._refute.set()  # the refutation reaches the registry from the member's loop
        return peer_health_pb2.PingResponse(
            domain_id=self._member.member_id, incarnation=incarnation
        )

    async def ProbeOnBehalf(
        self, request: peer_health_pb2.ProbeOnBehalfRequest, context: Context
    ) -> peer_health_pb2.ProbeOnBehalfResponse:
        self._check_target(request.domain_id)
        if not request.target_id:
            raise InvalidArgument("target_id", "must not be empty")
        if not request.target_address:
            raise InvalidArgument("target_address", "must not be empty")
        timeout = DEFAULT_PROBE_TIMEOUT_S
        if request.HasField("timeout"):
            timeout = from_duration(request.timeout)
            if not MIN_PROBE_TIMEOUT_S <= timeout <= MAX_PROBE_TIMEOUT_S:
                raise InvalidArgument("timeout", "must be between 10 ms and 10 s")
        incarnation = await self._member.probe_for(
            request.target_id, request.target_address, request.suspected_incarnation, timeout
        )
        if incarnation is None:
            return peer_health_pb2.ProbeOnBehalfResponse(
                reachable=False, error=f"{request.target_id} did not answer in {timeout:.2f}s"
            )
        return peer_health_pb2.ProbeOnBehalfResponse(reachable=True, incarnation=incarnation)


class PeerHealth:
    """A service's part in the health federation: the servicer to mount, and the loop.

    Args:
        member_id: The service's domain id.
        settings: Tunables.
    """

    def __init__(self, member_id: str, settings: PeerHealthSettings | None = None) -> None:
        self.settings = settings or PeerHealthSettings()
        self.prober = GrpcProber(member_id)
        self.coordinator = RegistryCoordinator(member_id)
        self.member = Member(member_id, self.prober, self.coordinator, self.settings.member)
        self._refute = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        """Mounts PeerHealthService; returns its full name (for health and reflection)."""
        peer_health_pb2_grpc.add_PeerHealthServiceServicer_to_server(
            PeerHealthServicer(self.member, self._refute), server
        )
        return [SERVICE_NAME]

    def start(self, registry: grpc.aio.Channel) -> None:
        """Starts probing (and refuting) in the background, with the registry at `registry`."""
        self.coordinator.attach(registry)
        self._tasks = [
            asyncio.create_task(self.member.run(), name="peer-health"),
            asyncio.create_task(self._refute_when_told(), name="peer-health-refute"),
        ]

    async def _refute_when_told(self) -> None:
        while True:
            await self._refute.wait()
            self._refute.clear()
            try:
                await self.member.refute_if_needed()
            except Exception as exc:
                log.info("refutation not delivered yet (%s); next round retries", exc)

    async def stop(self) -> None:
        """Stops probing and closes the channels to peers."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.prober.close()
