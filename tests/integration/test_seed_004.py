"""Seed 004's integration scenario on real processes under Guardian: a governance check,
an anomaly healed (anomaly -> governance -> Guardian restart -> outcome in shared memory),
and the integrity of the immutable log that recorded the decisions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from grace.guardian.v1 import guardian_pb2, guardian_pb2_grpc
from grace.kernels.governance.v1 import governance_pb2 as gov
from grace.kernels.governance.v1 import governance_pb2_grpc
from grace.kernels.immune.v1 import immune_pb2 as imm
from grace.kernels.immune.v1 import immune_pb2_grpc
from grace.kernels.immutable_log.v1 import immutable_log_pb2 as ilog
from grace.kernels.immutable_log.v1 import immutable_log_pb2_grpc
from grace.memory.v1 import memory_pb2, memory_pb2_grpc
from services.common.channels import channel
from services.common.governance_client import GovernanceClient
from services.guardian.topology import load_topology
from tests.support import eventually, free_ports, session_pki

pytestmark = pytest.mark.slow

COMPONENTS = ("registry", "memory", "immutable_log", "governance", "immune", "ai_domain")


def topology(ports: dict[str, int]) -> str:
    # Every default component this scenario does not use is switched off, so nothing
    # binds a fixed port.
    unused = "".join(
        f"[components.{c.name}]\nenabled = false\n"
        for c in load_topology(None, groups=["examples"]).components
        if c.name not in ports
    )
    return (
        unused
        + f"""
[probe]
interval_s = 0.5
timeout_s = 2.0
failure_threshold = 3
startup_poll_s = 0.1

[boot]
startup_timeout_s = 60.0
stop_timeout_s = 10.0

[registration]
enabled = false

[components.registry]
port = {ports["registry"]}

[components.memory]
module = "services.memory"
port = {ports["memory"]}
chunk = 1
depends_on = ["registry"]

[components.immutable_log]
module = "services.kernels.immutable_log"
port = {ports["immutable_log"]}
chunk = 1
depends_on = ["registry"]

[components.governance]
module = "services.kernels.governance"
port = {ports["governance"]}
chunk = 1.5
depends_on = ["registry", "immutable_log"]
env = {{ GRACE_GOVERNANCE_MODE = "enforce", GRACE_GOVERNANCE_RELAY_INTERVAL_S = "0.1" }}

[components.immune]
module = "services.kernels.immune"
port = {ports["immune"]}
chunk = 1.5
depends_on = ["governance", "memory"]
env = {{ GRACE_IMMUNE_MIN_POINTS = "10", GRACE_IMMUNE_COOLDOWN_S = "0" }}

[components.ai_domain]
module = "examples.ai_domain"
port = {ports["ai_domain"]}
group = "core"
chunk = 2
depends_on = ["registry", "memory"]
"""
    )


@dataclass
class System:
    ports: dict[str, int]
    channels: dict[str, grpc.aio.Channel]

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"


def start_guardian(config: Path, port: int, tmp_path: Path) -> subprocess.Popen[bytes]:
    """`python -m services.guardian` with the test topology, in its own process group."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRACE_")}
    env.update(session_pki().env())  # Guardian and its children use the test session's CA
    env["GRACE_EVENTBUS_ADDR"] = f"127.0.0.1:{free_ports(1)[0]}"  # no bus: outboxes hold
    with (tmp_path / "guardian.err").open("wb") as errors:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.guardian",
                "--config",
                str(config),
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path / "data"),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            start_new_session=True,
        )


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[System]:
    names = ("guardian", *COMPONENTS)
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    config = tmp_path / "grace.toml"
    config.write_text(topology(ports))
    guardian = start_guardian(config, ports["guardian"], tmp_path)
    channels = {name: channel(f"127.0.0.1:{ports[name]}") for name in names}
    out = System(ports, channels)
    try:
        stub = guardian_pb2_grpc.GuardianServiceStub(channels["guardian"])

        async def all_serving() -> bool:
            if guardian.poll() is not None:
                pytest.fail("guardian exited: " + (tmp_path / "guardian.err").read_text()[-2000:])
            try:
                listed = await stub.ListComponents(guardian_pb2.ListComponentsRequest(), timeout=2)
            except grpc.aio.AioRpcError:
                return False
            states = {c.name: c.state for c in listed.components}
            return all(states.get(n) == guardian_pb2.COMPONENT_STATE_SERVING for n in COMPONENTS)

        await eventually(
            all_serving, within_s=120, what="every component SERVING under Guardian", every_s=0.2
        )
        yield out
    finally:
        for chan in channels.values():
            await chan.close()
        guardian.send_signal(signal.SIGTERM)
        try:
            guardian.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(guardian.pid, signal.SIGKILL)
            guardian.wait(timeout=10)


async def test_governance_check_anomaly_healing_and_log_integrity(system: System) -> None:
    governance = governance_pb2_grpc.GovernanceServiceStub(system.channels["governance"])
    immune = immune_pb2_grpc.ImmuneServiceStub(system.channels["immune"])
    guardian = guardian_pb2_grpc.GuardianServiceStub(system.channels["guardian"])
    log = immutable_log_pb2_grpc.ImmutableLogServiceStub(system.channels["immutable_log"])
    memory = memory_pb2_grpc.SharedMemoryServiceStub(system.channels["memory"])

    # 1. Governance check, as a component asks through the client.
    client = GovernanceClient(system.address("governance"), fallback_mode="enforce")
    try:
        low = await client.check("test_user", "test_action", "test_resource", risk_level="low")
        assert low.allowed
        assert low.source == "governance"
        await governance.CreatePolicy(
            gov.CreatePolicyRequest(
                policy=gov.Policy(
                    policy_id="no-payments",
                    description="payments are frozen",
                    action="payments.*",
                    effect=gov.EFFECT_FORBID,
                )
            )
        )
        denied = await client.check("test_user", "payments.process", risk_level="low")
        assert not denied.allowed
        assert any("payments are frozen" in r for r in denied.reasons)
    finally:
        await client.close()

    # 2. Latency injected into ai_domain: an anomaly, governance allows, Guardian restarts.
    before = await guardian.GetComponent(
        guardian_pb2.GetComponentRequest(component_name="ai_domain")
    )
    normal = [20.0, 21.0, 19.0, 22.0, 20.0, 18.0, 21.0, 20.0, 19.0, 20.0, 21.0, 20.0]
    points = [
        imm.MetricPoint(component="ai_domain", metric="latency_ms", value=v)
        for v in [*normal, 900.0, 950.0, 1000.0]
    ]
    reported = await immune.ReportMetrics(imm.ReportMetricsRequest(points=points))
    assert [a.kind for a in reported.anomalies] == ["latency_ms_spike"]
    anomaly_id = reported.anomalies[0].anomaly_id

    async def healed() -> bool:
        got = await immune.GetAnomaly(imm.GetAnomalyRequest(anomaly_id=anomaly_id))
        outcome = got.remediation.outcome
        assert outcome not in (
            imm.REMEDIATION_OUTCOME_FAILED,
            imm.REMEDIATION_OUTCOME_DENIED,
            imm.REMEDIATION_OUTCOME_SKIPPED,
        ), got.remediation.reason
        return outcome == imm.REMEDIATION_OUTCOME_SUCCEEDED

    await eventually(healed, within_s=90, what="the anomaly remediated", every_s=0.2)
    after = await guardian.GetComponent(
        guardian_pb2.GetComponentRequest(component_name="ai_domain")
    )
    assert after.component.pid != before.component.pid  # restarted
    assert after.component.state == guardian_pb2.COMPONENT_STATE_SERVING
    heal_decisions = await governance.ListDecisions(
        gov.ListDecisionsRequest(actor="immune", verdict=gov.VERDICT_ALLOW)
    )
    assert [d.action for d in heal_decisions.decisions] == ["heal:restart_component"]
    playbooks = await memory.ListByDomain(
        memory_pb2.ListByDomainRequest(domain_id="immune", contribution_type="remediation_playbook")
    )
    [record] = playbooks.contributions
    assert record.successful_applications == 1
    stats = await immune.GetImmuneStats(imm.GetImmuneStatsRequest())
    assert stats.remediations_by_outcome == {"REMEDIATION_OUTCOME_SUCCEEDED": 1}

    # 3. The decisions reached the immutable log, whose integrity holds.
    async def decisions_logged() -> bool:
        entries = await log.GetEntries(ilog.GetEntriesRequest(start=0, page_size=1000))
        kinds = [e.data.kind for e in entries.entries]
        return kinds.count("governance.decision") >= 3

    await eventually(
        decisions_logged, within_s=30, what="governance decisions in the immutable log", every_s=0.2
    )
    integrity = await log.VerifyIntegrity(ilog.VerifyIntegrityRequest())
    assert integrity.valid
    assert integrity.checked >= 3
