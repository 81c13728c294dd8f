"""A bare health-federation member, run in its own network namespace by
`test_federation_netns.py`: PeerHealthService on a gRPC server, registered in the registry,
probing its ring targets like every SDK domain and kernel, until SIGTERM.

    python -m tests.integration.federation_member MEMBER_ID HOST REGISTRY_ADDRESS
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import grpc

from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.channels import channel
from services.common.peer_health import MEMBER_METADATA, PeerHealth, PeerHealthSettings
from services.common.timestamps import to_duration


async def main(member_id: str, host: str, registry: str) -> None:
    """Serves and probes until SIGTERM."""
    peer = PeerHealth(member_id, PeerHealthSettings.from_env(os.environ))
    server = grpc.aio.server()
    peer.add_to_server(server)
    port = server.add_insecure_port(f"{host}:0")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with channel(registry) as chan:
        await registry_pb2_grpc.RegistryServiceStub(chan).RegisterDomain(
            registry_pb2.RegisterDomainRequest(
                domain_id=member_id,
                host=host,
                port=port,
                metadata=MEMBER_METADATA,
                lease_ttl=to_duration(3600),
            ),
            timeout=30,
            wait_for_ready=True,
        )
        peer.start(chan)
        print("member ready", flush=True)
        await stop.wait()
        await peer.stop()
    await server.stop(None)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
