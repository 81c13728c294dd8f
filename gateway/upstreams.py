"""The gateway's upstreams: one long-lived channel per gRPC service, and per domain address.

A component's address is `GRACE_<COMPONENT>_ADDR`, else 127.0.0.1 and the component's
default port (`services.common.config.peer_address`); a component with neither (a new
service whose port is not in `DEFAULT_PORTS` yet) answers 503 with a message naming the
variable to set. Calls to `grace.domain.v1.DomainService` go to the domain named by the
request's `domain_id`: the gateway asks the registry (`GetDomain`) for its address on every
call, so a domain that moves is followed at once, and keeps one channel per address.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import grpc

from gateway.errors import HttpError, from_rpc_error
from grace.registry.v1 import registry_pb2
from services.common.channels import channel
from services.common.config import DEFAULT_PORTS, EnvReader, env_prefix, peer_address

log = logging.getLogger(__name__)

REGISTRY = "registry"
_GET_DOMAIN = "/grace.registry.v1.RegistryService/GetDomain"

Metadata = tuple[tuple[str, str], ...]

# How long `Upstream.connected` waits at most for a channel that is not connected.
CONNECT_WAIT_S = 10.0


class Upstream:
    """One channel and the multi-callables made on it (built once per method)."""

    def __init__(self, name: str, address: str, max_message_bytes: int) -> None:
        self.name = name
        self.address = address
        self.channel = channel(address, max_message_bytes=max_message_bytes)
        self._unary: dict[str, grpc.aio.UnaryUnaryMultiCallable[Any, Any]] = {}
        self._stream: dict[str, grpc.aio.UnaryStreamMultiCallable[Any, Any]] = {}

    def unary(
        self, path: str, response_parser: Callable[[bytes], Any]
    ) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
        """The unary multi-callable of a method path."""
        found = self._unary.get(path)
        if found is None:
            found = self.channel.unary_unary(
                path,
                request_serializer=_serialize,
                response_deserializer=response_parser,
            )
            self._unary[path] = found
        return found

    def stream(
        self, path: str, response_parser: Callable[[bytes], Any]
    ) -> grpc.aio.UnaryStreamMultiCallable[Any, Any]:
        """The server-streaming multi-callable of a method path."""
        found = self._stream.get(path)
        if found is None:
            found = self.channel.unary_stream(
                path,
                request_serializer=_serialize,
                response_deserializer=response_parser,
            )
            self._stream[path] = found
        return found

    async def connected(self, timeout_s: float | None) -> None:
        """Returns once the channel is connected (at once while it is); 503 when it is not
        within `timeout_s` (None: `CONNECT_WAIT_S`)."""
        if self.channel.get_state(try_to_connect=True) is grpc.ChannelConnectivity.READY:
            return
        wait_s = CONNECT_WAIT_S if timeout_s is None else min(timeout_s, CONNECT_WAIT_S)
        try:
            await asyncio.wait_for(self.channel.channel_ready(), wait_s)
        except TimeoutError:
            raise HttpError(
                503,
                f"{self.name} at {self.address} cannot be reached: no connection within "
                f"{wait_s:g} s; nothing was sent, send the request again",
                status="UNAVAILABLE",
            ) from None

    async def close(self) -> None:
        """Closes the channel, cancelling calls still in flight."""
        await self.channel.close()


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()  # type: ignore[no-any-return]  # untyped protobuf


class Upstreams:
    """Every channel the gateway holds.

    Args:
        env: Environment to read `GRACE_<COMPONENT>_ADDR` from.
        max_message_bytes: Largest gRPC message sent or received.
        max_domain_channels: Domain channels kept open at most (least recently used closed).
    """

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        max_message_bytes: int = 4 * 1024 * 1024,
        max_domain_channels: int = 256,
    ) -> None:
        self._env = dict(env)
        self._max_message_bytes = max_message_bytes
        self._max_domain_channels = max_domain_channels
        self._components: dict[str, Upstream] = {}
        self._domains: OrderedDict[str, Upstream] = OrderedDict()
        self._retired: list[Upstream] = []

    def address(self, component: str) -> str | None:
        """The configured address of a component, or None when it has none."""
        explicit = EnvReader(self._env).raw(f"{env_prefix(component)}ADDR")
        if explicit is not None:
            return explicit
        if component in DEFAULT_PORTS:
            return peer_address(self._env, component)
        return None

    def component(self, component: str) -> Upstream:
        """The upstream of a component (its channel is opened on first use).

        Raises:
            HttpError: 503 when the component has no address.
        """
        found = self._components.get(component)
        if found is None:
            address = self.address(component)
            if address is None:
                raise HttpError(
                    503,
                    f"no address for {component}: set {env_prefix(component)}ADDR",
                )
            found = Upstream(component, address, self._max_message_bytes)
            self._components[component] = found
        return found

    async def domain(
        self, domain_id: str, metadata: Metadata, deadline_s: float | None
    ) -> Upstream:
        """The upstream of a registered domain, resolved through the registry.

        Raises:
            HttpError: The registry's answer (404 for an unknown domain, 503 when it is down).
        """
        registry = self.component(REGISTRY)
        get_domain = registry.unary(_GET_DOMAIN, registry_pb2.GetDomainResponse.FromString)
        try:
            response = await get_domain(
                registry_pb2.GetDomainRequest(domain_id=domain_id),
                metadata=metadata,
                timeout=deadline_s,
            )
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, REGISTRY) from None
        address = response.domain.address
        if not address:
            raise HttpError(503, f"domain {domain_id!r} has no address in the registry")
        found = self._domains.get(address)
        if found is None:
            found = Upstream(f"domain {domain_id}", address, self._max_message_bytes)
            self._domains[address] = found
            while len(self._domains) > self._max_domain_channels:
                _, evicted = self._domains.popitem(last=False)
                # Calls may still run on it; it is closed at shutdown.
                self._retired.append(evicted)
        else:
            self._domains.move_to_end(address)
        return found

    def configured(self) -> dict[str, str | None]:
        """Component -> address for every component with an open or configured channel."""
        return {name: upstream.address for name, upstream in self._components.items()}

    async def close(self) -> None:
        """Closes every channel."""
        everything = [*self._components.values(), *self._domains.values(), *self._retired]
        self._components.clear()
        self._domains.clear()
        self._retired.clear()
        await asyncio.gather(*(u.close() for u in everything), return_exceptions=True)
