"""Keeps a kernel registered in the registry as a domain: register, then heartbeat.

The registry may be down when the kernel starts or may restart later: registration is
retried with backoff (1 s doubling to 30 s), a heartbeat answered NOT_FOUND registers
again, and nothing here ever stops the kernel from serving: the same `Registrar` as the
SDK's domains, configured from the kernel's settings.

A registered kernel also takes part in the health federation like every SDK domain
(`services.common.peer_health`): `peer_health_of` builds its member, the kernel mounts it
with `mounted`, and `keep_registered` runs it once the registry channel is open.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc

from grace.registry.v1 import registry_pb2
from services.common.channels import channel
from services.common.config import EnvReader, env_prefix, peer_address
from services.common.peer_health import MEMBER_METADATA, PeerHealth, PeerHealthSettings
from services.common.registration import Registrar
from services.common.timestamps import to_duration

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DomainRegistration:
    """What a kernel registers.

    Attributes:
        registry_address: `host:port` of the registry.
        domain_id: The kernel's domain id.
        host: Host other components dial.
        capabilities: Capabilities offered.
        version: Software version.
        public_key: The kernel's raw Ed25519 public key, if it signs.
        lease_ttl_s: Lease length; heartbeats go every third of it.
    """

    registry_address: str
    domain_id: str
    host: str
    capabilities: Sequence[str]
    version: str = "0.1.0"
    public_key: bytes = b""
    lease_ttl_s: float = 30.0


def peer_health_of(
    registration: DomainRegistration | None, env: Mapping[str, str]
) -> PeerHealth | None:
    """The kernel's health-federation member, or None when it does not register or
    `GRACE_FEDERATION` is false."""
    settings = PeerHealthSettings.from_env(env)
    if registration is None or not settings.enabled:
        return None
    return PeerHealth(registration.domain_id, settings)


def mounted(peer_health: PeerHealth | None, server: grpc.aio.Server) -> list[str]:
    """Mounts the member's PeerHealthService, if any; returns the names it serves."""
    return [] if peer_health is None else list(peer_health.add_to_server(server))


async def keep_registered(
    registration: DomainRegistration, port: int, peer_health: PeerHealth | None = None
) -> None:
    """Registers and heartbeats until cancelled (see `services.common.registration`), and
    runs `peer_health` meanwhile.

    Kernels do not measure their calls, so their heartbeats carry no metrics.
    """

    def request() -> registry_pb2.RegisterDomainRequest:
        return registry_pb2.RegisterDomainRequest(
            domain_id=registration.domain_id,
            host=registration.host,
            port=port,
            capabilities=list(registration.capabilities),
            version=registration.version,
            public_key=registration.public_key,
            lease_ttl=to_duration(registration.lease_ttl_s),
            metadata=MEMBER_METADATA if peer_health is not None else {},
        )

    async with channel(registration.registry_address) as chan:
        registrar = Registrar(
            chan,
            request,
            lambda: None,
            heartbeat_interval_s=registration.lease_ttl_s / 3,
            backoff_initial_s=1.0,
        )
        if peer_health is not None:
            peer_health.start(chan)
        try:
            await registrar.run()
        finally:
            if peer_health is not None:
                await peer_health.stop()


def registration_from_env(
    env: Mapping[str, str],
    service: str,
    host: str,
    capabilities: Sequence[str],
    public_key: bytes = b"",
) -> DomainRegistration | None:
    """The registration a kernel makes, or None when `GRACE_<SERVICE>_REGISTER` is false.

    `GRACE_<SERVICE>_ADVERTISE_HOST` sets the host others dial (default: the bind host, or
    127.0.0.1 when binding every interface); `GRACE_REGISTRY_ADDR` the registry.
    """
    reader = EnvReader(env)
    prefix = env_prefix(service)
    if not reader.flag(f"{prefix}REGISTER", True):
        return None
    default_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return DomainRegistration(
        registry_address=peer_address(env, "registry"),
        domain_id=service,
        host=reader.text(f"{prefix}ADVERTISE_HOST", default_host),
        capabilities=list(capabilities),
        public_key=public_key,
        lease_ttl_s=reader.number(f"{prefix}LEASE_TTL_S", 30.0, minimum=1, maximum=3600),
    )
