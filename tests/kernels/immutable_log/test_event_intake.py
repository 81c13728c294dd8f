"""The log anchors an event only when its signature passes the bus's rules, so calling its
DeliverEvent directly cannot anchor a forged system event."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from grace.domain.v1 import domain_pb2, domain_pb2_grpc
from grace.eventbus.v1 import event_pb2
from grace.kernels.immutable_log.v1 import immutable_log_pb2 as pb
from grace.kernels.immutable_log.v1 import immutable_log_pb2_grpc as pb_grpc
from grace.kernels.trust.v1 import trust_pb2_grpc
from services.common.components import COMPONENT_IDS, component_key_path
from services.common.event_signing import sign_event
from services.common.signing import SigningKey, load_or_create_key
from services.kernels.immutable_log.config import LogConfig
from services.kernels.immutable_log.log import LogSettings
from services.kernels.immutable_log.server import ImmutableLogServer
from services.kernels.trust.claims import ClaimRules
from services.kernels.trust.config import TrustConfig
from services.kernels.trust.server import TrustServer
from services.kernels.trust.trust import TrustSettings
from tests.kernels.trust.test_claims import claim
from tests.support import server_config, serving


@dataclass
class Log:
    domain: domain_pb2_grpc.DomainServiceStub
    log: pb_grpc.ImmutableLogServiceStub
    orchestrator: SigningKey


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[Log]:
    async with contextlib.AsyncExitStack() as stack:
        trust = TrustServer(
            TrustConfig(
                server=server_config("trust", tmp_path),
                settings=TrustSettings(claims=ClaimRules(COMPONENT_IDS, tmp_path)),
                registry_address="127.0.0.1:1",
                registry_timeout_s=1.0,
                registration=None,
            )
        )
        trust_server, trust_chan = await stack.enter_async_context(
            serving(trust.config.server, trust)
        )
        orchestrator = load_or_create_key(component_key_path(tmp_path, "orchestrator"))
        await claim(trust_pb2_grpc.TrustServiceStub(trust_chan), "orchestrator", orchestrator)
        config = LogConfig(
            server=server_config(
                "immutable_log", tmp_path, peers={"GRACE_TRUST_ADDR": trust_server.address}
            ),
            settings=LogSettings(origin="test.example/log"),
            key_file=tmp_path / "immutable_log.key",
            registration=None,
        )
        service = ImmutableLogServer(config)
        _, log_chan = await stack.enter_async_context(serving(config.server, service))
        yield Log(
            domain_pb2_grpc.DomainServiceStub(log_chan),
            pb_grpc.ImmutableLogServiceStub(log_chan),
            orchestrator,
        )


def completed(event_id: str, key: SigningKey | None) -> event_pb2.Event:
    event = event_pb2.Event(
        id=event_id, event_type="workflow.completed", source_domain="orchestrator"
    )
    event.time.FromSeconds(1_800_000_000)
    event.data.update({"execution_id": "ex_1", "final_state": "SUCCEEDED"})
    return sign_event(event, key) if key is not None else event


def deliver(event: event_pb2.Event) -> domain_pb2.DeliverEventRequest:
    return domain_pb2.DeliverEventRequest(
        domain_id="immutable_log", subscription_id="direct", event=event, attempt=1
    )


async def test_a_forged_or_unsigned_system_event_delivered_directly_is_not_anchored(
    log: Log,
) -> None:
    for forged in (completed("e-forged", SigningKey.generate()), completed("e-unsigned", None)):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await log.domain.DeliverEvent(deliver(forged))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'orchestrator'" in (refused.value.details() or "")
    entries = await log.log.GetEntries(pb.GetEntriesRequest(start=0, page_size=100))
    assert list(entries.entries) == []

    genuine = await log.domain.DeliverEvent(deliver(completed("e-genuine", log.orchestrator)))
    assert genuine.outcome == domain_pb2.DELIVERY_OUTCOME_ACK
    entries = await log.log.GetEntries(pb.GetEntriesRequest(start=0, page_size=100))
    assert [(e.data.kind, e.data.actor) for e in entries.entries] == [
        ("workflow.completed", "orchestrator")
    ]


async def test_a_batch_is_anchored_in_order_up_to_the_first_refused_event(log: Log) -> None:
    first, second, third = (completed(f"e-{n}", log.orchestrator) for n in range(3))
    forged = completed("e-forged", SigningKey.generate())

    def batch(*events: event_pb2.Event) -> domain_pb2.DeliverEventsRequest:
        return domain_pb2.DeliverEventsRequest(
            domain_id="immutable_log", subscription_id="direct", events=events, attempt=1
        )

    answer = await log.domain.DeliverEvents(batch(first, second, forged, third))
    outcomes = [(r.outcome, r.reason.split(":")[0]) for r in answer.results]
    assert outcomes == [
        (domain_pb2.DELIVERY_OUTCOME_ACK, ""),
        (domain_pb2.DELIVERY_OUTCOME_ACK, ""),
        (domain_pb2.DELIVERY_OUTCOME_RETRY, "PERMISSION_DENIED"),
    ]
    entries = await log.log.GetEntries(pb.GetEntriesRequest(start=0, page_size=100))
    assert [e.data.data["event_id"] for e in entries.entries] == ["e-0", "e-1"]

    # Delivered again (the bus retries from the refused event on): each recorded once.
    again = await log.domain.DeliverEvents(batch(first, second, third))
    assert [r.outcome for r in again.results] == [domain_pb2.DELIVERY_OUTCOME_ACK] * 3
    entries = await log.log.GetEntries(pb.GetEntriesRequest(start=0, page_size=100))
    assert [e.data.data["event_id"] for e in entries.entries] == ["e-0", "e-1", "e-2"]

    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await log.domain.DeliverEvents(batch())
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
