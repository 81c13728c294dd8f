"""The gateway reports each upstream's call latency and errors to a real immune kernel, and
serves that kernel's unified telemetry on /domains/system/telemetry and .../collaboration-graph."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path

import grpc
import httpx

from gateway.config import GatewayConfig
from gateway.server import Gateway, build_app
from grace.kernels.immune.v1 import immune_pb2 as pb
from grace.kernels.immune.v1 import immune_pb2_grpc
from services.common.call_metrics import CallTallies, TrafficKind, traffic_tallies
from services.kernels.immune.config import ImmuneConfig
from services.kernels.immune.detector import DetectorSettings
from services.kernels.immune.remediation import RemediationSettings
from services.kernels.immune.server import ImmuneServer
from services.registry.server import RegistryServer
from tests.gateway.conftest import gateway_config
from tests.registry.conftest import registry_config
from tests.support import UNREACHABLE, server_config, serving, session_pki


class Discard:
    async def publish(self, events: object) -> None:
        """The bus is not under test here."""


async def series(
    stub: immune_pb2_grpc.ImmuneServiceStub, component: str, metric: str
) -> pb.GetBaselineResponse:
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        try:
            return await stub.GetBaseline(pb.GetBaselineRequest(component=component, metric=metric))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND or (
                asyncio.get_running_loop().time() > deadline
            ):
                raise
            await asyncio.sleep(0.05)


async def test_forwarded_calls_become_latency_and_error_series_per_upstream(
    tmp_path: Path,
) -> None:
    registry = RegistryServer(registry_config(tmp_path))
    immune = ImmuneServer(
        ImmuneConfig(
            server=server_config("immune", tmp_path),
            detector=DetectorSettings(),
            remediation=RemediationSettings(),
            remediate=False,
        ),
        bus=Discard(),
    )
    async with contextlib.AsyncExitStack() as stack:
        reg, _ = await stack.enter_async_context(serving(registry.config.server, registry))
        imm, imm_chan = await stack.enter_async_context(serving(immune.config.server, immune))
        config = gateway_config(
            {"GRACE_REGISTRY_ADDR": reg.address, "GRACE_GOVERNANCE_ADDR": UNREACHABLE},
            immune_addr=imm.address,
            metrics_interval_s=0.1,
        )
        gateway = await stack.enter_async_context(Gateway(config, build_app(config)))
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=gateway.url, timeout=30))
        for _ in range(3):
            assert (await http.get("/domains/list")).status_code == 200
        # Governance is down: its answers are 503, errors on the upstream's side.
        assert (await http.get("/kernels/governance/stats")).status_code == 503
        stub = immune_pb2_grpc.ImmuneServiceStub(imm_chan)
        registry_latency = await series(stub, "registry", "gateway_latency_ms")
        registry_errors = await series(stub, "registry", "gateway_errors")
        governance_rate = await series(stub, "governance", "gateway_error_rate")
    assert registry_latency.points >= 1
    assert registry_latency.median > 0
    assert registry_errors.median == 0
    assert governance_rate.points == 1
    assert governance_rate.median == 1.0


def test_reporting_follows_the_immune_address() -> None:
    assert GatewayConfig.from_env({"GRACE_IMMUNE_ADDR": "off"}).immune_addr == ""
    assert GatewayConfig.from_env({}).immune_addr == "127.0.0.1:8131"
    configured = GatewayConfig.from_env(
        {"GRACE_IMMUNE_ADDR": "10.0.0.5:8131", "GRACE_GATEWAY_METRICS_INTERVAL_S": "2"}
    )
    assert (configured.immune_addr, configured.metrics_interval_s) == ("10.0.0.5:8131", 2.0)


async def test_the_telemetry_routes_answer_readers_401_anonymous_and_the_overview_links_them(
    tmp_path: Path,
) -> None:
    immune = ImmuneServer(
        ImmuneConfig(
            server=server_config("immune", tmp_path),
            detector=DetectorSettings(),
            remediation=RemediationSettings(),
            remediate=False,
        ),
        bus=Discard(),
    )
    pki = session_pki()
    async with contextlib.AsyncExitStack() as stack:
        imm, imm_chan = await stack.enter_async_context(serving(immune.config.server, immune))
        tallies = CallTallies()
        tallies.record("data_domain", 0.004, error=False, caller="orchestrator")
        tallies.record_edge(TrafficKind.DELIVERY, "data_domain", "ai_domain", 0.002, error=False)
        await immune_pb2_grpc.ImmuneServiceStub(imm_chan).ReportMetrics(
            pb.ReportMetricsRequest(traffic=traffic_tallies(tallies.drain_traffic()))
        )
        config = gateway_config(
            {"GRACE_IMMUNE_ADDR": imm.address, "GRACE_GOVERNANCE_ADDR": UNREACHABLE},
            security=pki.security(),
        )
        gateway = await stack.enter_async_context(Gateway(config, build_app(config)))
        verify = ssl.create_default_context(cafile=str(pki.ca_file))
        anonymous = await stack.enter_async_context(
            httpx.AsyncClient(base_url=gateway.url, timeout=30, verify=verify)
        )
        reader = await stack.enter_async_context(
            httpx.AsyncClient(
                base_url=gateway.url,
                timeout=30,
                verify=verify,
                headers={"authorization": f"Bearer {pki.token('rita', 'reader')}"},
            )
        )
        for path in ("/domains/system/telemetry", "/domains/system/collaboration-graph"):
            assert (await anonymous.get(path)).status_code == 401
        telemetry = await reader.get("/domains/system/telemetry", params={"window_seconds": 120})
        graph = await reader.get("/domains/system/collaboration-graph")
        deliveries = await reader.get(
            "/domains/system/collaboration-graph", params={"kind": "TRAFFIC_KIND_DELIVERY"}
        )
        too_long = await reader.get("/domains/system/telemetry", params={"window_seconds": 10**6})
        overview = (await reader.get("/domains/system/overview")).json()
        openapi = (await reader.get("/openapi.json")).json()
    assert telemetry.status_code == 200, telemetry.text
    body = telemetry.json()
    assert body["total_requests"] == "1"  # int64 as a string, as the JSON mapping says
    assert body["collaboration_rate"] == 1.0
    assert body["domains"][0]["health"] == "DOMAIN_HEALTH_HEALTHY"
    assert graph.status_code == 200, graph.text
    assert {(e["kind"], e["source"], e["target"]) for e in graph.json()["edges"]} == {
        ("TRAFFIC_KIND_CALL", "orchestrator", "data_domain"),
        ("TRAFFIC_KIND_DELIVERY", "data_domain", "ai_domain"),
    }
    assert [e["kind"] for e in deliveries.json()["edges"]] == ["TRAFFIC_KIND_DELIVERY"]
    assert too_long.status_code == 400
    assert overview["links"] == {
        "telemetry": "/domains/system/telemetry",
        "collaboration_graph": "/domains/system/collaboration-graph",
    }
    assert "/domains/system/telemetry" in openapi["paths"]
    assert "/domains/system/collaboration-graph" in openapi["paths"]
