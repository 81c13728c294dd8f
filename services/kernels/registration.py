"""Keeps a kernel registered in the registry as a domain: register, then heartbeat.

The registry may be down when the kernel starts or may restart later: registration is
retried with backoff (1 s doubling to 30 s), a heartbeat answered NOT_FOUND registers
again, and nothing here ever stops the kernel from serving: the same `Registrar` as the
SDK's domains, configured from the kernel's settings.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from grace.registry.v1 import registry_pb2
from services.common.channels import channel
from services.common.config import EnvReader, env_prefix, peer_address
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


async def keep_registered(registration: DomainRegistration, port: int) -> None:
    """Registers and heartbeats until cancelled (see `services.common.registration`).

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
        )

    async with channel(registration.registry_address) as chan:
        registrar = Registrar(
            chan,
            request,
            lambda: None,
            heartbeat_interval_s=registration.lease_ttl_s / 3,
            backoff_initial_s=1.0,
        )
        await registrar.run()


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
