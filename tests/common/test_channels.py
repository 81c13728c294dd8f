"""Keepalive: a client pinging as often as the shared server policy allows is never sent
GOAWAY "too_many_pings"."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from grace.registry.v1 import registry_pb2
from services.common.channels import (
    CLIENT_KEEPALIVE_OPTIONS,
    SERVER_MIN_PING_INTERVAL_MS,
    server_keepalive_options,
)
from services.common.server import GraceServer
from tests.common.test_server import SlowStartService
from tests.support import server_config

ALLOWED_MS = 1000  # the policy at a tenth of its scale, so the fast tests run in seconds
GET_DOMAIN = "/grace.registry.v1.RegistryService/GetDomain"


async def _echo(request: bytes, context: Any) -> bytes:
    return b""


async def states_while_idle(address: str, keepalive_ms: int, idle_s: float) -> list[str]:
    """The connectivity states a client channel to `address` goes through while it sits idle
    for `idle_s`, pinging every `keepalive_ms` (a GOAWAY shows as a change of state)."""
    options = dict(CLIENT_KEEPALIVE_OPTIONS)
    options["grpc.keepalive_time_ms"] = keepalive_ms
    seen: list[str] = []
    async with grpc.aio.insecure_channel(address, options=list(options.items())) as chan:
        request = registry_pb2.GetDomainRequest(domain_id="d").SerializeToString()
        await chan.unary_unary(GET_DOMAIN)(request, timeout=10)
        deadline = time.monotonic() + idle_s
        state = chan.get_state()
        while (left := deadline - time.monotonic()) > 0:
            try:
                await asyncio.wait_for(chan.wait_for_state_change(state), left)
            except TimeoutError:
                break
            state = chan.get_state()
            seen.append(state.name)
    return seen


async def states_on_a_plain_server(
    server_options: list[tuple[str, int]], keepalive_ms: int, idle_s: float
) -> list[str]:
    server = grpc.aio.server(options=server_options)
    handler = grpc.method_handlers_generic_handler(
        "grace.registry.v1.RegistryService",
        {"GetDomain": grpc.unary_unary_rpc_method_handler(_echo)},
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        return await states_while_idle(f"127.0.0.1:{port}", keepalive_ms, idle_s)
    finally:
        await server.stop(0)


async def test_an_idle_client_pinging_within_the_policy_keeps_its_connection() -> None:
    # Five pings, 1.2 s apart, against an allowance of one a second.
    options = server_keepalive_options(ALLOWED_MS)
    assert await states_on_a_plain_server(options, ALLOWED_MS + 200, idle_s=6.5) == []


async def test_a_server_without_the_policy_answers_the_same_pings_with_goaway() -> None:
    # grpc's default allowance (one ping per 5 minutes) is what a misspelt key leaves.
    default_policy = [("grpc.keepalive_permit_without_calls", 1)]
    assert await states_on_a_plain_server(default_policy, ALLOWED_MS + 200, idle_s=6.5) != []


@pytest.mark.slow
async def test_a_grace_server_keeps_a_client_pinging_just_over_its_allowance(
    tmp_path: Path,
) -> None:
    # Clients ping every 30 s; this one pings just over the servers' 10 s allowance, so three
    # pings arrive in ~35 s: the third would be a GOAWAY under grpc's default policy.
    service = SlowStartService()
    service.release.set()
    # Plaintext: the keepalive policy is the same with or without TLS, and the raw channel
    # here sets its own keepalive options.
    config = dataclasses.replace(server_config("test", tmp_path), security=None)
    async with GraceServer(config, service) as server:
        keepalive_ms = SERVER_MIN_PING_INTERVAL_MS + 1500
        assert await states_while_idle(server.address, keepalive_ms, idle_s=36) == []
