"""The shared memory over real gRPC: every RPC, error paths, restarts and announcements."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.api import annotations_pb2
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from grace.memory.v1 import memory_pb2, memory_pb2_grpc
from services.memory.server import SERVICE_NAME, MemoryServer
from tests.memory.conftest import RecordingPublisher, memory_config
from tests.support import eventually, serving

SEED_BODY = """{
  "domain_id": "ai_domain",
  "contribution_type": "optimization",
  "content": {"technique": "caching", "improvement": "2x faster"}
}"""


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
async def server(
    tmp_path: Path, publisher: RecordingPublisher
) -> AsyncIterator[tuple[MemoryServer, grpc.aio.Channel]]:
    service = MemoryServer(memory_config(tmp_path), publisher=publisher)
    async with serving(service.config.server, service) as (_, chan):
        yield service, chan


@pytest.fixture
def stub(server: tuple[MemoryServer, grpc.aio.Channel]) -> memory_pb2_grpc.SharedMemoryServiceStub:
    return memory_pb2_grpc.SharedMemoryServiceStub(server[1])


def seed_request() -> memory_pb2.ContributeRequest:
    return json_format.Parse(SEED_BODY, memory_pb2.ContributeRequest())


async def contribute(
    stub: memory_pb2_grpc.SharedMemoryServiceStub, domain_id: str = "ai_domain", **fields: object
) -> memory_pb2.Contribution:
    request = seed_request()
    request.domain_id = domain_id
    for key, value in fields.items():
        if key == "tags":
            request.tags.extend(value)  # type: ignore[arg-type]
        else:
            setattr(request, key, value)
    return (await stub.Contribute(request)).contribution


async def error_of(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    return raised.value


def bad_field(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return bad.field_violations[0].field
    raise AssertionError("no BadRequest detail")


async def test_the_server_reports_serving_for_the_memory_service(
    server: tuple[MemoryServer, grpc.aio.Channel],
) -> None:
    health = health_pb2_grpc.HealthStub(server[1])
    reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_every_rpc_has_an_http_route_and_the_seed_routes_are_exact() -> None:
    service = memory_pb2.DESCRIPTOR.services_by_name["SharedMemoryService"]
    routes = {}
    for method in service.methods:
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        routes[method.name] = (
            rule.WhichOneof("pattern"),
            getattr(rule, rule.WhichOneof("pattern")),
        )
    assert routes["Contribute"] == ("post", "/domains/memory/contribute")
    assert routes["Query"] == ("get", "/domains/memory/query")
    assert routes["Verify"] == ("post", "/domains/memory/verify/{contribution_id}")
    assert routes["Apply"] == ("post", "/domains/memory/apply/{contribution_id}")
    assert routes["ListByDomain"] == ("get", "/domains/memory/domain/{domain_id}")
    assert routes["TopContributors"] == ("get", "/domains/memory/top-contributors")
    assert routes["GetStats"] == ("get", "/domains/memory/stats")
    assert routes["Retract"] == ("post", "/domains/memory/retract/{contribution_id}")
    assert len(routes) == len(service.methods) == 11


async def test_the_seed_flow_contribute_verify_apply_query_works_over_grpc(
    stub: memory_pb2_grpc.SharedMemoryServiceStub,
) -> None:
    created = await stub.Contribute(seed_request())
    cid = created.contribution.contribution_id

    verified = await stub.Verify(
        memory_pb2.VerifyRequest(contribution_id=cid, domain_id="data_domain")
    )
    applied = await stub.Apply(
        memory_pb2.ApplyRequest(
            contribution_id=cid, domain_id="memory_domain", outcome=memory_pb2.OUTCOME_SUCCESS
        )
    )
    found = await stub.Query(memory_pb2.QueryRequest(query="caching faster", min_confidence=0.7))

    assert created.created
    assert json_format.MessageToDict(created.contribution.content) == {
        "technique": "caching",
        "improvement": "2x faster",
    }
    assert created.contribution.confidence == pytest.approx(0.5)
    assert verified.changed
    assert verified.contribution.verifications == 1
    assert applied.created
    assert applied.application.outcome == memory_pb2.OUTCOME_SUCCESS
    assert applied.contribution.confidence == pytest.approx(0.75)
    assert [r.contribution.contribution_id for r in found.results] == [cid]
    assert found.results[0].score == pytest.approx(
        found.results[0].relevance * found.results[0].contribution.confidence
    )


async def test_get_contribution_returns_verdicts_and_recent_applications(
    stub: memory_pb2_grpc.SharedMemoryServiceStub,
) -> None:
    c = await contribute(stub)
    await stub.Dispute(
        memory_pb2.DisputeRequest(
            contribution_id=c.contribution_id, domain_id="data_domain", reason="slower here"
        )
    )
    await stub.Apply(
        memory_pb2.ApplyRequest(
            contribution_id=c.contribution_id,
            domain_id="data_domain",
            outcome=memory_pb2.OUTCOME_FAILURE,
            detail="timed out",
        )
    )

    reply = await stub.GetContribution(
        memory_pb2.GetContributionRequest(contribution_id=c.contribution_id)
    )

    assert [(v.domain_id, v.kind, v.reason) for v in reply.verdicts] == [
        ("data_domain", memory_pb2.VERDICT_KIND_DISPUTED, "slower here")
    ]
    assert [(a.domain_id, a.outcome, a.detail) for a in reply.recent_applications] == [
        ("data_domain", memory_pb2.OUTCOME_FAILURE, "timed out")
    ]
    assert reply.contribution.confidence == pytest.approx(1 / 4)
    assert reply.contribution.updated_at.seconds >= reply.contribution.created_at.seconds


async def test_repeated_verification_is_idempotent_over_grpc(
    stub: memory_pb2_grpc.SharedMemoryServiceStub,
) -> None:
    c = await contribute(stub)
    request = memory_pb2.VerifyRequest(contribution_id=c.contribution_id, domain_id="data_domain")
    first = await stub.Verify(request)
    second = await stub.Verify(request)
    assert first.changed
    assert not second.changed
    assert second.contribution.verifications == 1


async def test_list_top_contributors_and_stats_over_grpc(
    stub: memory_pb2_grpc.SharedMemoryServiceStub,
) -> None:
    for _ in range(3):
        await contribute(stub)
    await contribute(stub, "data_domain", initial_confidence=0.9)

    page = await stub.ListByDomain(
        memory_pb2.ListByDomainRequest(domain_id="ai_domain", page_size=2)
    )
    rest = await stub.ListByDomain(
        memory_pb2.ListByDomainRequest(
            domain_id="ai_domain", page_size=2, page_token=page.next_page_token
        )
    )
    by_mean = await stub.TopContributors(
        memory_pb2.TopContributorsRequest(order_by=memory_pb2.CONTRIBUTOR_ORDER_MEAN_CONFIDENCE)
    )
    by_count = await stub.TopContributors(memory_pb2.TopContributorsRequest())
    stats = await stub.GetStats(memory_pb2.GetStatsRequest())

    assert page.total_size == 3
    assert len(page.contributions) + len(rest.contributions) == 3
    assert rest.next_page_token == ""
    assert [c.domain_id for c in by_mean.contributors] == ["data_domain", "ai_domain"]
    assert [c.domain_id for c in by_count.contributors] == ["ai_domain", "data_domain"]
    assert stats.total_contributions == 4
    assert dict(stats.contributions_by_domain) == {"ai_domain": 3, "data_domain": 1}
    assert stats.mean_confidence == pytest.approx((0.5 * 3 + 0.9) / 4)


async def test_watch_streams_changes_over_grpc(
    server: tuple[MemoryServer, grpc.aio.Channel], stub: memory_pb2_grpc.SharedMemoryServiceStub
) -> None:
    call = stub.WatchContributions(memory_pb2.WatchContributionsRequest(pattern="optim*"))
    # Start reading before the writes so the subscription exists.
    first = asyncio.ensure_future(call.read())
    await eventually(lambda: server[0].memory.feed.watchers == 1, within_s=10.0)
    c = await contribute(stub)
    await stub.Verify(memory_pb2.VerifyRequest(contribution_id=c.contribution_id, domain_id="x"))

    messages = [await asyncio.wait_for(first, 10), await asyncio.wait_for(call.read(), 10)]
    call.cancel()

    assert [(m.kind, m.domain_id) for m in messages] == [
        (memory_pb2.CHANGE_KIND_CONTRIBUTED, "ai_domain"),
        (memory_pb2.CHANGE_KIND_VERIFIED, "x"),
    ]
    assert messages[1].contribution.verifications == 1


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: setattr(r, "domain_id", ""), "domain_id"),
        (lambda r: setattr(r, "contribution_type", "has space"), "contribution_type"),
        (lambda r: setattr(r, "initial_confidence", -0.1), "initial_confidence"),
        (lambda r: r.tags.append("bad tag"), "tags[0]"),
        (lambda r: r.content.update({"blob": "x" * 70_000}), "content"),
    ],
)
async def test_bad_contributions_are_invalid_argument_naming_the_field(
    stub: memory_pb2_grpc.SharedMemoryServiceStub, mutate: object, field: str
) -> None:
    request = seed_request()
    mutate(request)  # type: ignore[operator]
    error = await error_of(stub.Contribute(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_field(error) == field


async def test_empty_and_wordless_queries_are_invalid_argument(
    stub: memory_pb2_grpc.SharedMemoryServiceStub,
) -> None:
    for query in ("", "  ...  "):
        error = await error_of(stub.Query(memory_pb2.QueryRequest(query=query)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_field(error) == "query"


async def test_unknown_ids_are_not_found_on_every_rpc_that_takes_one(
    stub: memory_pb2_grpc.SharedMemoryServiceStub,
) -> None:
    calls = [
        stub.GetContribution(memory_pb2.GetContributionRequest(contribution_id="nope")),
        stub.Verify(memory_pb2.VerifyRequest(contribution_id="nope", domain_id="a")),
        stub.Dispute(memory_pb2.DisputeRequest(contribution_id="nope", domain_id="a", reason="r")),
        stub.Apply(
            memory_pb2.ApplyRequest(
                contribution_id="nope", domain_id="a", outcome=memory_pb2.OUTCOME_SUCCESS
            )
        ),
        stub.Retract(memory_pb2.RetractRequest(contribution_id="nope", domain_id="a", reason="r")),
    ]
    for call in calls:
        assert (await error_of(call)).code() == grpc.StatusCode.NOT_FOUND


async def test_self_verification_is_failed_precondition(
    stub: memory_pb2_grpc.SharedMemoryServiceStub,
) -> None:
    c = await contribute(stub)
    error = await error_of(
        stub.Verify(
            memory_pb2.VerifyRequest(contribution_id=c.contribution_id, domain_id="ai_domain")
        )
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_apply_without_outcome_and_dispute_without_reason_are_invalid(
    stub: memory_pb2_grpc.SharedMemoryServiceStub,
) -> None:
    c = await contribute(stub)
    no_outcome = await error_of(
        stub.Apply(memory_pb2.ApplyRequest(contribution_id=c.contribution_id, domain_id="b"))
    )
    no_reason = await error_of(
        stub.Dispute(memory_pb2.DisputeRequest(contribution_id=c.contribution_id, domain_id="b"))
    )
    assert bad_field(no_outcome) == "outcome"
    assert bad_field(no_reason) == "reason"


async def test_a_reused_request_id_with_other_content_is_already_exists(
    stub: memory_pb2_grpc.SharedMemoryServiceStub,
) -> None:
    first = await contribute(stub, request_id="req-1")
    same = await contribute(stub, request_id="req-1")
    other = seed_request()
    other.request_id = "req-1"
    other.content.update({"technique": "batching"})
    error = await error_of(stub.Contribute(other))
    assert same.contribution_id == first.contribution_id
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_bad_watch_pattern_is_invalid_argument(
    stub: memory_pb2_grpc.SharedMemoryServiceStub,
) -> None:
    call = stub.WatchContributions(memory_pb2.WatchContributionsRequest(pattern="bad pattern"))
    error = await error_of(call.read())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_contributions_and_evidence_survive_a_restart(tmp_path: Path) -> None:
    config = memory_config(tmp_path)
    service = MemoryServer(config, publisher=RecordingPublisher())
    async with serving(config.server, service) as (_, chan):
        stub = memory_pb2_grpc.SharedMemoryServiceStub(chan)
        c = await contribute(stub, tags=["ops"])
        await stub.Verify(
            memory_pb2.VerifyRequest(contribution_id=c.contribution_id, domain_id="b")
        )

    again = MemoryServer(config, publisher=RecordingPublisher())
    async with serving(config.server, again) as (_, chan):
        stub = memory_pb2_grpc.SharedMemoryServiceStub(chan)
        got = await stub.GetContribution(
            memory_pb2.GetContributionRequest(contribution_id=c.contribution_id)
        )
        found = await stub.Query(memory_pb2.QueryRequest(query="caching", tags=["ops"]))
        repeat = await stub.Verify(
            memory_pb2.VerifyRequest(contribution_id=c.contribution_id, domain_id="b")
        )

    assert got.contribution.verifications == 1
    assert got.contribution.confidence == pytest.approx(2 / 3)
    assert [r.contribution.contribution_id for r in found.results] == [c.contribution_id]
    assert not repeat.changed


async def test_writes_succeed_while_the_bus_is_down_and_announcements_follow_when_it_returns(
    server: tuple[MemoryServer, grpc.aio.Channel],
    stub: memory_pb2_grpc.SharedMemoryServiceStub,
    publisher: RecordingPublisher,
) -> None:
    publisher.down = True
    c = await contribute(stub)
    await stub.Verify(memory_pb2.VerifyRequest(contribution_id=c.contribution_id, domain_id="b"))
    await stub.Dispute(
        memory_pb2.DisputeRequest(contribution_id=c.contribution_id, domain_id="d", reason="no")
    )
    await stub.Apply(
        memory_pb2.ApplyRequest(
            contribution_id=c.contribution_id, domain_id="b", outcome=memory_pb2.OUTCOME_SUCCESS
        )
    )
    await eventually(lambda: publisher.attempts >= 1, within_s=10.0)
    assert publisher.events == []
    assert await server[0].memory.outbox.count() == 4

    publisher.down = False
    await eventually(lambda: len(publisher.events) == 4, within_s=60)

    assert publisher.types() == [
        "memory.contributed",
        "memory.verified",
        "memory.disputed",
        "memory.applied",
    ]
    assert {e.subject for e in publisher.events} == {c.contribution_id}
    assert publisher.events[3].data["outcome"] == "success"
    assert json.loads(json.dumps(publisher.events[3].data))["actor_domain"] == "b"
    # The relay deletes a batch once the publisher returned: poll for it.
    for _ in range(600):
        if await server[0].memory.outbox.count() == 0:
            break
        await asyncio.sleep(0.05)
    assert await server[0].memory.outbox.count() == 0


async def test_the_author_retracts_over_grpc_and_the_contribution_leaves_every_view(
    stub: memory_pb2_grpc.SharedMemoryServiceStub, publisher: RecordingPublisher
) -> None:
    c = await contribute(stub)
    body = json_format.Parse(
        '{"domain_id": "ai_domain", "reason": "rolled back", "request_id": "comp-1"}',
        memory_pb2.RetractRequest(),
    )
    body.contribution_id = c.contribution_id

    first = await stub.Retract(body)
    again = await stub.Retract(body)

    assert first.changed
    assert not again.changed
    assert first.contribution.retracted
    assert first.contribution.retraction_reason == "rolled back"
    assert first.contribution.retracted_at.seconds > 0
    assert again.contribution == first.contribution
    found = await stub.Query(memory_pb2.QueryRequest(query="caching"))
    listed = await stub.ListByDomain(memory_pb2.ListByDomainRequest(domain_id="ai_domain"))
    top = await stub.TopContributors(memory_pb2.TopContributorsRequest())
    stats = await stub.GetStats(memory_pb2.GetStatsRequest())
    got = await stub.GetContribution(
        memory_pb2.GetContributionRequest(contribution_id=c.contribution_id)
    )
    assert list(found.results) == []
    assert (list(listed.contributions), listed.total_size) == ([], 0)
    assert list(top.contributors) == []
    assert (stats.total_contributions, stats.retracted_contributions) == (0, 1)
    assert dict(stats.contributions_by_domain) == {}
    assert got.contribution.retracted
    assert got.contribution.content["technique"] == "caching"
    await eventually(lambda: "memory.retracted" in publisher.types(), within_s=30)
    [event] = [e for e in publisher.events if e.event_type == "memory.retracted"]
    assert (event.subject, event.data["request_id"]) == (c.contribution_id, "comp-1")


async def test_retract_by_another_domain_is_permission_denied(
    stub: memory_pb2_grpc.SharedMemoryServiceStub,
) -> None:
    c = await contribute(stub)
    error = await error_of(
        stub.Retract(
            memory_pb2.RetractRequest(
                contribution_id=c.contribution_id, domain_id="data_domain", reason="mine now"
            )
        )
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    found = await stub.Query(memory_pb2.QueryRequest(query="caching"))
    assert [r.contribution.contribution_id for r in found.results] == [c.contribution_id]


async def test_bad_retractions_are_invalid_argument_naming_the_field(
    stub: memory_pb2_grpc.SharedMemoryServiceStub,
) -> None:
    c = await contribute(stub)
    cid = c.contribution_id
    for request, field in [
        (memory_pb2.RetractRequest(domain_id="ai_domain", reason="r"), "contribution_id"),
        (memory_pb2.RetractRequest(contribution_id=cid, reason="r"), "domain_id"),
        (memory_pb2.RetractRequest(contribution_id=cid, domain_id="ai_domain"), "reason"),
        (
            memory_pb2.RetractRequest(
                contribution_id=cid, domain_id="ai_domain", reason="r", request_id="x" * 129
            ),
            "request_id",
        ),
    ]:
        error = await error_of(stub.Retract(request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_field(error) == field


async def test_verdicts_and_applications_on_a_retracted_contribution_are_failed_precondition(
    stub: memory_pb2_grpc.SharedMemoryServiceStub,
) -> None:
    c = await contribute(stub)
    cid = c.contribution_id
    await stub.Retract(
        memory_pb2.RetractRequest(contribution_id=cid, domain_id="ai_domain", reason="r")
    )
    calls = [
        stub.Verify(memory_pb2.VerifyRequest(contribution_id=cid, domain_id="b")),
        stub.Dispute(memory_pb2.DisputeRequest(contribution_id=cid, domain_id="b", reason="no")),
        stub.Apply(
            memory_pb2.ApplyRequest(
                contribution_id=cid, domain_id="b", outcome=memory_pb2.OUTCOME_SUCCESS
            )
        ),
    ]
    for call in calls:
        error = await error_of(call)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "retracted" in (error.details() or "")
