"""The immune kernel subscribes to metric events on a real event bus."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from grace.eventbus.v1 import eventbus_pb2, eventbus_pb2_grpc
from services.eventbus.server import EventBusServer
from services.kernels.immune.config import ImmuneConfig
from services.kernels.immune.detector import DetectorSettings
from services.kernels.immune.remediation import RemediationSettings
from services.kernels.immune.server import ImmuneServer
from tests.eventbus.conftest import bus_config
from tests.support import server_config, serving


async def test_the_kernel_creates_its_push_subscription_to_metric_events(tmp_path: Path) -> None:
    bus = EventBusServer(bus_config(tmp_path / "bus"))
    async with serving(bus.config.server, bus) as (bus_server, bus_chan):
        config = replace(
            ImmuneConfig(
                server=server_config("immune", tmp_path),
                detector=DetectorSettings(),
                remediation=RemediationSettings(),
                remediate=False,
            ),
            subscribe=True,
            eventbus_address=bus_server.address,
        )
        async with serving(config.server, ImmuneServer(config)):
            stub = eventbus_pb2_grpc.EventBusServiceStub(bus_chan)
            for _ in range(200):
                listed = await stub.ListSubscriptions(eventbus_pb2.ListSubscriptionsRequest())
                if listed.subscriptions:
                    break
                await asyncio.sleep(0.05)
            [subscription] = listed.subscriptions
            assert subscription.subscription_id == "immune-metrics"
            assert subscription.domain_id == "immune"
            assert set(subscription.patterns) == {"metrics.*", "domain.call.*"}
