"""The seed's distributed health example under `grace up --with-examples`: an example
domain stops answering (SIGSTOP: its process stays), its peers suspect it, at least two of
them confirm it down, Guardian volunteers and restarts it as a governed heal, and the
restarted domain's refutation tells everyone it is back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import pytest
from google.protobuf import json_format

from grace.eventbus.v1 import event_pb2, eventbus_pb2, eventbus_pb2_grpc
from grace.guardian.v1 import guardian_pb2, guardian_pb2_grpc
from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.channels import channel
from tests.grace_up import running_grace

pytestmark = pytest.mark.slow

SUSPECT = "ai_domain"
PEERS = ("data_domain", "memory_domain", "governance_domain")
DEADLINE_S = 90.0


async def _pid(guardian: guardian_pb2_grpc.GuardianServiceStub, name: str) -> int:
    listed = await guardian.ListComponents(guardian_pb2.ListComponentsRequest(page_size=1000))
    return next(c.pid for c in listed.components if c.name == name)


async def _events(bus: eventbus_pb2_grpc.EventBusServiceStub) -> list[event_pb2.Event]:
    history = await bus.GetHistory(
        eventbus_pb2.GetHistoryRequest(pattern="domain.*", source_domain="registry", page_size=1000)
    )
    return [e for e in history.events if e.subject == SUSPECT]


async def test_peers_confirm_a_stopped_domain_down_and_guardian_restarts_it(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "GRACE_FEDERATION_INTERVAL_S": "0.5"}
    async with (
        running_grace(tmp_path, env=env) as grace,
        channel(grace.addresses["registry"]) as registry_chan,
        channel(grace.addresses["guardian"]) as guardian_chan,
        channel(grace.addresses["eventbus"]) as bus_chan,
    ):
        registry = registry_pb2_grpc.RegistryServiceStub(registry_chan)
        guardian = guardian_pb2_grpc.GuardianServiceStub(guardian_chan)
        bus = eventbus_pb2_grpc.EventBusServiceStub(bus_chan)
        loop = asyncio.get_running_loop()
        for domain_id in (SUSPECT, *PEERS):
            got = await registry.GetDomain(registry_pb2.GetDomainRequest(domain_id=domain_id))
            assert got.domain.metadata["federation"] == "v1"
        await asyncio.sleep(3.0)  # a few rounds: everyone has heard everyone
        assert (
            list((await registry.ListSuspicions(registry_pb2.ListSuspicionsRequest())).suspicions)
            == []
        )

        stopped = await _pid(guardian, SUSPECT)
        os.kill(stopped, signal.SIGSTOP)
        try:
            deadline = loop.time() + DEADLINE_S
            confirmed = None
            while confirmed is None and loop.time() < deadline:
                events = await _events(bus)
                confirmed = next(
                    (e for e in events if e.event_type == "domain.down_confirmed"), None
                )
                await asyncio.sleep(0.5)
            assert confirmed is not None, "the peers never confirmed the stopped domain"
            data = json_format.MessageToDict(confirmed.data)
            assert len(set(data["confirming"])) >= 2
            assert SUSPECT not in data["confirming"]

            recovered = None
            while recovered is None and loop.time() < deadline:
                events = await _events(bus)
                recovered = next((e for e in events if e.event_type == "domain.recovered"), None)
                await asyncio.sleep(0.5)
            assert recovered is not None, "the restarted domain was never announced back"
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGCONT)
        kinds = [e.event_type for e in await _events(bus)]
        assert kinds.index("domain.suspected") < kinds.index("domain.down_confirmed")
        assert kinds.index("domain.down_confirmed") < kinds.index("domain.recovered")
        assert await _pid(guardian, SUSPECT) != stopped
        journal = (grace.data_dir / "logs" / "guardian.log").read_text(errors="replace")
        assert f"healing.volunteered {SUSPECT}" in journal
        assert f"healing.started {SUSPECT}" in journal
