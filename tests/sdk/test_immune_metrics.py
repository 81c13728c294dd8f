"""A domain reports its call latency and errors to a real immune kernel, once per
heartbeat interval, and keeps serving when the kernel is down."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from grace.domain.v1 import domain_pb2, domain_pb2_grpc
from grace.kernels.immune.v1 import immune_pb2 as pb
from grace.kernels.immune.v1 import immune_pb2_grpc
from services.common.channels import channel
from services.kernels.immune.config import ImmuneConfig
from services.kernels.immune.detector import DetectorSettings
from services.kernels.immune.remediation import RemediationSettings
from services.kernels.immune.server import ImmuneServer
from services.sdk import DomainConfig
from tests.sdk.conftest import Probe, counting_domain, domain_config
from tests.support import UNREACHABLE, server_config, serving


class Discard:
    async def publish(self, events: object) -> None:
        """The bus is not under test here."""


def immune_config(tmp_path: Path) -> ImmuneConfig:
    return ImmuneConfig(
        server=server_config("immune", tmp_path),
        detector=DetectorSettings(),
        remediation=RemediationSettings(),
        remediate=False,
    )


async def call(address: str, action: str, **data: object) -> None:
    payload = struct_pb2.Struct()
    payload.update(data)
    async with channel(address) as chan:
        stub = domain_pb2_grpc.DomainServiceStub(chan)
        # `flaky` failing on purpose answers INTERNAL: an error the domain counts.
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stub.Execute(
                domain_pb2.ExecuteRequest(domain_id="test_domain", action=action, input=payload)
            )


async def baseline(stub: immune_pb2_grpc.ImmuneServiceStub, metric: str) -> pb.GetBaselineResponse:
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        try:
            return await stub.GetBaseline(
                pb.GetBaselineRequest(component="test_domain", metric=metric)
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND or (
                asyncio.get_running_loop().time() > deadline
            ):
                raise
            await asyncio.sleep(0.05)


async def test_call_latency_and_errors_arrive_at_the_immune_kernel(tmp_path: Path) -> None:
    immune = ImmuneServer(immune_config(tmp_path), bus=Discard())
    async with serving(immune.config.server, immune) as (imm_server, imm_chan):
        probe = Probe()
        probe.fail_next = 1
        config = domain_config(tmp_path, immune_addr=imm_server.address)
        async with counting_domain(probe).serve(config) as running:
            await call(running.address, "flaky")  # fails: an error
            await call(running.address, "echo", text="a")
            await call(running.address, "echo", text="b")
            stub = immune_pb2_grpc.ImmuneServiceStub(imm_chan)
            latency = await baseline(stub, "latency_ms")
            errors = await baseline(stub, "errors")
            rate = await baseline(stub, "error_rate")
    # The three calls fell in one or two intervals: at most two points per series, and
    # one failed call in three.
    assert 1 <= latency.points <= 2
    assert latency.median >= 0
    assert errors.points == latency.points
    assert rate.points == latency.points
    assert errors.median in (0.5, 1.0)  # one error, in one of at most two intervals


async def test_a_domain_serves_on_when_the_immune_kernel_is_down(tmp_path: Path) -> None:
    probe = Probe()
    config = domain_config(tmp_path, immune_addr=UNREACHABLE)
    async with counting_domain(probe).serve(config) as running:
        for i in range(3):
            await call(running.address, "echo", text=str(i))
            await asyncio.sleep(0.15)
        reporter = running.service.immune
        assert reporter is not None
        assert reporter.failures >= 1
        assert reporter.reports == 0
    assert probe.runs["echo"] == 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [("off", ""), ("127.0.0.1:9999", "127.0.0.1:9999"), (None, "127.0.0.1:8131")],
)
def test_the_immune_address_comes_from_the_environment(value: str | None, expected: str) -> None:
    env = {"GRACE_IMMUNE_ADDR": value} if value is not None else {}
    assert DomainConfig.from_env("test_domain", 8300, env).immune_addr == expected


async def test_served_calls_reach_the_telemetry_as_edges_from_their_authenticated_caller(
    tmp_path: Path,
) -> None:
    immune = ImmuneServer(immune_config(tmp_path), bus=Discard())
    async with serving(immune.config.server, immune) as (imm_server, imm_chan):
        config = domain_config(tmp_path, immune_addr=imm_server.address)
        async with counting_domain(Probe()).serve(config) as running:
            await call(running.address, "echo", text="a")
            await call(running.address, "echo", text="b")
            stub = immune_pb2_grpc.ImmuneServiceStub(imm_chan)
            deadline = asyncio.get_running_loop().time() + 20
            while True:
                graph = await stub.GetCollaborationGraph(pb.GetCollaborationGraphRequest())
                counted = sum(e.count for e in graph.edges)
                if counted >= 2 or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.05)
            telemetry = await stub.GetTelemetry(pb.GetTelemetryRequest())
    # The test process calls with the session's admin token: the caller is that person.
    assert [(e.kind, e.source, e.target, e.count) for e in graph.edges] == [
        (pb.TRAFFIC_KIND_CALL, "user:test-admin", "test_domain", 2)
    ]
    assert telemetry.total_requests == 2
    assert telemetry.cross_domain_calls == 0  # a person's calls are not collaboration
