"""The trigger mesh over gRPC: rule RPCs with their error codes, a rules file loaded at
start, and an event delivered through DomainService firing its rule once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from grace.domain.v1 import domain_pb2, domain_pb2_grpc
from grace.eventbus.v1 import event_pb2
from grace.kernels.triggers.v1 import triggers_pb2 as pb
from grace.kernels.triggers.v1 import triggers_pb2_grpc
from services.common.config import ConfigError
from services.common.outbox import OutboxEvent
from services.kernels.triggers.config import TriggersConfig
from services.kernels.triggers.mesh import MeshSettings
from services.kernels.triggers.rules_file import load_rules
from services.kernels.triggers.server import TriggersServer
from tests.kernels.scheduler.doubles import RecordingPeers, ScriptedGate
from tests.support import eventually, server_config, serving

RULES = """
[[rules]]
rule_id = "start-document"
pattern = "document.uploaded"
condition = "data.size > `100`"
action = "workflow"
target = { workflow_id = "document" }
input = { document_id = "subject" }
min_trust = 0.5
"""


class ListPublisher:
    def __init__(self) -> None:
        self.events: list[OutboxEvent] = []

    async def publish(self, events: Sequence[OutboxEvent]) -> None:
        self.events.extend(events)


class Trust:
    async def score(self, domain_id: str) -> float:
        return {"library": 0.9}.get(domain_id, 0.0)


class Running:
    def __init__(self, chan: grpc.aio.Channel, peers: RecordingPeers, log: ListPublisher) -> None:
        self.stub = triggers_pb2_grpc.TriggersServiceStub(chan)
        self.domain = domain_pb2_grpc.DomainServiceStub(chan)
        self.peers = peers
        self.log = log


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    rules = tmp_path / "rules.toml"
    rules.write_text(RULES)
    config = replace(
        TriggersConfig(server=server_config("triggers", tmp_path)),
        mesh=MeshSettings(poll_interval_s=0.05),
        rules_file=rules,
        relay_interval_s=0.05,
    )
    peers, log = RecordingPeers(), ListPublisher()
    service = TriggersServer(
        config,
        peers=peers,
        gate=ScriptedGate(),
        trust=Trust(),
        bus=ListPublisher(),
        immutable_log=log,
    )
    async with serving(config.server, service) as (_, chan):
        yield Running(chan, peers, log)


def uploaded(event_id: str, source: str, size: int) -> event_pb2.Event:
    data = struct_pb2.Struct()
    data.update({"size": size})
    return event_pb2.Event(
        id=event_id,
        event_type="document.uploaded",
        source_domain=source,
        subject="doc-1",
        data=data,
    )


async def test_the_rules_file_is_loaded_at_start(running: Running) -> None:
    got = await running.stub.GetRule(pb.GetRuleRequest(rule_id="start-document"))
    assert (got.rule.origin, got.rule.version, got.rule.min_trust) == ("file", 1, 0.5)


async def test_a_delivered_event_fires_its_rule_once_and_reaches_the_log(running: Running) -> None:
    for _ in range(3):  # the bus redelivers
        await running.domain.DeliverEvent(
            domain_pb2.DeliverEventRequest(event=uploaded("ev-1", "library", 500))
        )
    await running.domain.DeliverEvent(
        domain_pb2.DeliverEventRequest(event=uploaded("ev-2", "stranger", 500))
    )

    async def settled() -> bool:
        listed = await running.stub.ListFirings(pb.ListFiringsRequest())
        return len(listed.firings) == 2 and all(f.state != "pending" for f in listed.firings)

    await eventually(settled, within_s=10, every_s=0.05)
    states = {
        f.event_id: f.state
        for f in (await running.stub.ListFirings(pb.ListFiringsRequest())).firings
    }
    assert states == {"ev-1": "succeeded", "ev-2": "refused"}
    assert [(w, d) for w, d, _ in running.peers.workflows] == [
        ("document", {"document_id": "doc-1"})
    ]

    async def logged() -> bool:
        kinds = {e.event_type for e in running.log.events}
        return {"trigger.fired", "trigger.refused"} <= kinds

    await eventually(logged, within_s=10, every_s=0.05)


async def test_rules_are_created_updated_listed_and_deleted_with_versions(
    running: Running,
) -> None:
    rule = pb.Rule(
        rule_id="announce",
        pattern="invoice.*",
        action="event",
        target={"event_type": "invoice.noticed"},
    )
    created = await running.stub.PutRule(pb.PutRuleRequest(rule=rule))
    assert created.rule.version == 1
    updated = await running.stub.PutRule(pb.PutRuleRequest(rule=rule, expected_version=1))
    assert updated.rule.version == 2
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await running.stub.PutRule(pb.PutRuleRequest(rule=rule, expected_version=1))
    assert stale.value.code() == grpc.StatusCode.ABORTED
    first = await running.stub.ListRules(pb.ListRulesRequest(page_size=1))
    second = await running.stub.ListRules(
        pb.ListRulesRequest(page_size=1, page_token=first.next_page_token)
    )
    assert [r.rule_id for r in (*first.rules, *second.rules)] == ["announce", "start-document"]
    assert second.next_page_token == ""
    await running.stub.DeleteRule(pb.DeleteRuleRequest(rule_id="announce"))
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await running.stub.GetRule(pb.GetRuleRequest(rule_id="announce"))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "rule",
    [
        pb.Rule(rule_id="r", pattern="a", action="workflow"),
        pb.Rule(
            rule_id="r",
            pattern="a",
            action="workflow",
            target={"workflow_id": "w"},
            condition="a >",
        ),
        pb.Rule(rule_id="r", pattern="a b", action="event", target={"event_type": "x"}),
    ],
)
async def test_a_bad_rule_is_invalid_argument(running: Running, rule: pb.Rule) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.stub.PutRule(pb.PutRuleRequest(rule=rule))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_bad_firing_state_filter_is_invalid_argument(running: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await running.stub.ListFirings(pb.ListFiringsRequest(state="exploded"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_bad_rules_file_names_the_rule_and_field(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(RULES.replace("data.size > `100`", "data.size >"))
    with pytest.raises(ConfigError, match=r"rules\[0\]\.condition"):
        load_rules(path)
