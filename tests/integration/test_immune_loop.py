"""The immune loop end to end, fed only by the metrics a domain reports by itself: latency
injected into a domain under a real Guardian -> the SDK reports it -> the immune kernel
raises an anomaly -> governance allows -> Guardian restarts the domain -> the outcome is
recorded and the playbook's record in shared memory changes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from grace.domain.v1 import domain_pb2, domain_pb2_grpc
from grace.guardian.v1 import guardian_pb2, guardian_pb2_grpc
from grace.kernels.governance.v1 import governance_pb2 as gov
from grace.kernels.governance.v1 import governance_pb2_grpc
from grace.kernels.immune.v1 import immune_pb2 as imm
from grace.kernels.immune.v1 import immune_pb2_grpc
from grace.memory.v1 import memory_pb2, memory_pb2_grpc
from services.common import channels
from services.common.channels import ClientSecurity, channel
from services.guardian.config import GuardianConfig
from services.guardian.server import GuardianServer
from services.kernels.governance.config import GovernanceConfig
from services.kernels.governance.governance import GovernanceSettings
from services.kernels.governance.model import Mode
from services.kernels.governance.server import GovernanceServer
from services.kernels.immune.config import ImmuneConfig
from services.kernels.immune.detector import DetectorSettings
from services.kernels.immune.remediation import RemediationSettings
from services.kernels.immune.server import ImmuneServer
from services.memory.config import MemoryConfig
from services.memory.memory import MemorySettings
from services.memory.server import MemoryServer
from tests.guardian.conftest import topology
from tests.support import eventually, free_ports, server_config, serving, session_pki

pytestmark = pytest.mark.slow


class Discard:
    async def publish(self, events: object) -> None:
        """The bus and the log are not under test here."""


@pytest.fixture
def as_components() -> Iterator[None]:
    """The in-process kernels call each other as a Grace component does (its certificate,
    no token), so the immune kernel may name itself as the actor of the heal it asks for."""
    pki = session_pki()
    previous = channels.configured()
    channels.configure(ClientSecurity(pki.ca_file, pki.component.cert, pki.component.key))
    try:
        yield
    finally:
        channels.configure(previous)


@pytest.mark.usefixtures("as_components")
async def test_latency_reported_by_a_domain_is_healed_by_a_restart(tmp_path: Path) -> None:
    guardian_port, domain_port = free_ports(2)
    memory = MemoryServer(
        MemoryConfig(server=server_config("memory", tmp_path), settings=MemorySettings()),
        publisher=Discard(),
    )
    governance = GovernanceServer(
        GovernanceConfig(
            server=server_config("governance", tmp_path),
            settings=GovernanceSettings(mode=Mode.ENFORCE),
        ),
        bus=Discard(),
        immutable_log=Discard(),
    )
    async with contextlib.AsyncExitStack() as stack:
        mem, mem_chan = await stack.enter_async_context(serving(memory.config.server, memory))
        gov_server, gov_chan = await stack.enter_async_context(
            serving(governance.config.server, governance)
        )
        immune_config = ImmuneConfig(
            server=server_config("immune", tmp_path),
            detector=DetectorSettings(window=30, min_points=6),
            # One action per component in this test: the errors of the restart itself
            # must not start a second one.
            remediation=RemediationSettings(cooldown_s=600.0),
            guardian_address=f"127.0.0.1:{guardian_port}",
            memory_address=mem.address,
            governance_address=gov_server.address,
        )
        immune_server, imm_chan = await stack.enter_async_context(
            serving(immune_config.server, ImmuneServer(immune_config, bus=Discard()))
        )
        off = {f"GRACE_{p}_ADDR": "off" for p in ("REGISTRY", "EVENTBUS", "MEMORY", "TRUST")}
        topo = topology(
            {
                "slow_domain": {
                    "module": "tests.integration.slow_domain",
                    "port": domain_port,
                    "env": {
                        **off,
                        "GRACE_IMMUNE_ADDR": immune_server.address,
                        "GRACE_SLOW_DOMAIN_HEARTBEAT_S": "0.3",
                    },
                }
            }
        )
        config = GuardianConfig(
            server=dataclasses.replace(
                server_config(
                    "guardian",
                    tmp_path,
                    peers={"GRACE_GOVERNANCE_ADDR": gov_server.address},
                ),
                port=guardian_port,
            )
        )
        await stack.enter_async_context(serving(config.server, GuardianServer(config, topo)))
        guardian_chan = await stack.enter_async_context(channel(f"127.0.0.1:{guardian_port}"))
        domain_chan = await stack.enter_async_context(channel(f"127.0.0.1:{domain_port}"))
        guardian = guardian_pb2_grpc.GuardianServiceStub(guardian_chan)
        immune = immune_pb2_grpc.ImmuneServiceStub(imm_chan)
        domain = domain_pb2_grpc.DomainServiceStub(domain_chan)

        async def execute(action: str, **data: float) -> None:
            payload = struct_pb2.Struct()
            payload.update(data)
            with contextlib.suppress(grpc.aio.AioRpcError):  # down while it restarts
                await domain.Execute(
                    domain_pb2.ExecuteRequest(
                        domain_id="slow_domain", action=action, input=payload
                    ),
                    timeout=10,
                )

        async def traffic() -> None:
            while True:
                await execute("work")

        before = (
            await guardian.GetComponent(
                guardian_pb2.GetComponentRequest(component_name="slow_domain")
            )
        ).component.pid
        callers = [asyncio.create_task(traffic()) for _ in range(4)]
        try:

            async def warmed_up() -> bool:
                try:
                    got = await immune.GetBaseline(
                        imm.GetBaselineRequest(component="slow_domain", metric="latency_ms")
                    )
                except grpc.aio.AioRpcError:
                    return False
                return got.warmed_up

            await eventually(
                warmed_up,
                within_s=30,
                what="a warmed-up latency baseline from the domain",
                every_s=0.1,
            )
            await execute("slow_down", ms=400.0)

            async def remediated() -> bool:
                listed = await immune.ListRemediations(imm.ListRemediationsRequest())
                return any(
                    r.outcome
                    not in (imm.REMEDIATION_OUTCOME_UNSPECIFIED, imm.REMEDIATION_OUTCOME_RUNNING)
                    for r in listed.remediations
                )

            await eventually(remediated, within_s=60, what="a finished remediation", every_s=0.1)
        finally:
            for caller in callers:
                caller.cancel()
            await asyncio.gather(*callers, return_exceptions=True)

        anomalies = await immune.ListAnomalies(imm.ListAnomaliesRequest())
        assert [(a.component, a.kind) for a in anomalies.anomalies] == [
            ("slow_domain", "latency_ms_spike")
        ]
        [remediation] = (await immune.ListRemediations(imm.ListRemediationsRequest())).remediations
        assert remediation.outcome == imm.REMEDIATION_OUTCOME_SUCCEEDED, remediation.reason
        assert remediation.playbook == "restart_component"
        after = await guardian.GetComponent(
            guardian_pb2.GetComponentRequest(component_name="slow_domain")
        )
        assert after.component.pid != before
        assert after.component.state == guardian_pb2.COMPONENT_STATE_SERVING
        # One governance decision for the heal: Guardian confirmed the kernel's, not a second.
        decisions = await governance_pb2_grpc.GovernanceServiceStub(gov_chan).ListDecisions(
            gov.ListDecisionsRequest()
        )
        assert [(d.actor, d.action, d.verdict) for d in decisions.decisions] == [
            ("immune", "heal:restart_component", gov.VERDICT_ALLOW)
        ]
        assert remediation.governance_decision_id == decisions.decisions[0].decision_id
        playbooks = await memory_pb2_grpc.SharedMemoryServiceStub(mem_chan).ListByDomain(
            memory_pb2.ListByDomainRequest(
                domain_id="immune", contribution_type="remediation_playbook"
            )
        )
        [record] = playbooks.contributions
        assert (record.successful_applications, record.failed_applications) == (1, 0)
        stats = await immune.GetImmuneStats(imm.GetImmuneStatsRequest())
        [book] = [p for p in stats.playbooks if p.playbook == "restart_component"]
        assert book.success_rate == pytest.approx(2 / 3)  # from 0.5 untried
