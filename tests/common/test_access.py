"""The access table: every RPC has a rule, and the rules say who may call what."""

from __future__ import annotations

import pytest

from gateway.routes import discover_services
from grace.eventbus.v1 import event_pb2, eventbus_pb2
from grace.registry.v1 import registry_pb2
from services.common.access import ADMIN, COMPONENT, OPERATOR, READER, Level, Principal, rule_for

ADMIN_USER = Principal("alice", frozenset({ADMIN}))
OPERATOR_USER = Principal("olga", frozenset({OPERATOR}))
READER_USER = Principal("rita", frozenset({READER}))
COMPONENT_GUARDIAN = Principal("component:guardian", frozenset({COMPONENT}), "certificate")
AI_DOMAIN = Principal("domain:ai_domain", frozenset({"domain:ai_domain"}))
EVIL_DOMAIN = Principal("domain:evil", frozenset({"domain:evil"}))


def every_method() -> list[str]:
    return sorted(
        f"/{service.full_name}/{method.name}"
        for service in discover_services()
        for method in service.methods
    )


def test_every_rpc_of_every_generated_service_has_a_rule() -> None:
    methods = every_method()
    assert len(methods) > 90
    missing = [m for m in methods if rule_for(m) is None]
    assert missing == []


def test_an_unknown_method_has_no_rule_so_it_is_denied() -> None:
    assert rule_for("/grace.registry.v1.RegistryService/NoSuchMethod") is None


def test_anonymous_callers_reach_health_and_nothing_else() -> None:
    public = [m for m in every_method() if rule_for(m).level == Level.PUBLIC]  # type: ignore[union-attr]
    assert public == []
    assert rule_for("/grpc.health.v1.Health/Check").level == Level.PUBLIC  # type: ignore[union-attr]
    assert rule_for("/grpc.health.v1.Health/Watch").level == Level.PUBLIC  # type: ignore[union-attr]
    reflection = rule_for("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert reflection is not None
    assert reflection.check(None, None) == "unauthenticated"
    for method in every_method():
        assert rule_for(method).check(None, None) is not None, method  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "method",
    ["StopComponent", "RestartComponent", "StartComponent", "Heal"],
)
def test_guardian_control_needs_an_operator(method: str) -> None:
    rule = rule_for(f"/grace.guardian.v1.GuardianService/{method}")
    assert rule is not None
    assert rule.check(READER_USER, None) == "needs the operator or admin role"
    assert rule.check(AI_DOMAIN, None) == "needs the operator or admin role"
    assert rule.check(OPERATOR_USER, None) is None
    assert rule.check(ADMIN_USER, None) is None
    assert rule.check(COMPONENT_GUARDIAN, None) is None


@pytest.mark.parametrize("method", ["CreatePolicy", "UpdatePolicy", "DeletePolicy", "Approve"])
def test_policy_changes_and_approvals_need_an_operator(method: str) -> None:
    rule = rule_for(f"/grace.kernels.governance.v1.GovernanceService/{method}")
    assert rule is not None
    assert rule.check(READER_USER, None) is not None
    assert rule.check(EVIL_DOMAIN, None) is not None
    assert rule.check(OPERATOR_USER, None) is None


@pytest.mark.parametrize("method", ["DeliverEvent", "DeliverEvents"])
def test_pushing_events_to_a_domain_needs_an_operator_or_a_component(method: str) -> None:
    # The bus (a component) pushes; a reader or another domain cannot feed a domain events.
    rule = rule_for(f"/grace.domain.v1.DomainService/{method}")
    assert rule is not None
    assert rule.check(None, None) == "unauthenticated"
    assert rule.check(READER_USER, None) is not None
    assert rule.check(EVIL_DOMAIN, None) is not None
    assert rule.check(OPERATOR_USER, None) is None
    assert (
        rule.check(Principal("component:eventbus", frozenset({COMPONENT}), "certificate"), None)
        is None
    )


def test_switching_the_governance_mode_needs_an_admin() -> None:
    rule = rule_for("/grace.kernels.governance.v1.GovernanceService/SetMode")
    assert rule is not None
    assert rule.check(OPERATOR_USER, None) == "needs the admin role"
    assert rule.check(COMPONENT_GUARDIAN, None) == "needs the admin role"
    assert rule.check(ADMIN_USER, None) is None


def test_only_a_domain_itself_registers_heartbeats_or_deregisters_its_record() -> None:
    for name in ("RegisterDomain", "Heartbeat", "DeregisterDomain"):
        rule = rule_for(f"/grace.registry.v1.RegistryService/{name}")
        assert rule is not None
        request = registry_pb2.RegisterDomainRequest(domain_id="ai_domain")
        assert rule.check(AI_DOMAIN, request) is None
        denied = rule.check(EVIL_DOMAIN, request)
        assert denied is not None
        assert "domain_id='ai_domain'" in denied
        assert rule.check(READER_USER, request) is not None
        assert rule.check(OPERATOR_USER, request) is not None


def test_a_domain_publishes_only_as_itself() -> None:
    publish = rule_for("/grace.eventbus.v1.EventBusService/Publish")
    batch = rule_for("/grace.eventbus.v1.EventBusService/PublishBatch")
    assert publish is not None
    assert batch is not None
    spoofed = eventbus_pb2.PublishRequest(event_type="x.y", source_domain="ai_domain")
    assert publish.check(EVIL_DOMAIN, spoofed) is not None
    assert publish.check(AI_DOMAIN, spoofed) is None
    mixed = eventbus_pb2.PublishBatchRequest(
        events=[
            event_pb2.Event(event_type="x.y", source_domain="evil"),
            event_pb2.Event(event_type="x.y", source_domain="ai_domain"),
        ]
    )
    assert batch.check(EVIL_DOMAIN, mixed) is not None
    assert publish.check(READER_USER, spoofed) is not None


def test_a_publish_stream_opens_for_publishers_and_each_event_must_be_the_callers() -> None:
    stream = rule_for("/grace.eventbus.v1.EventBusService/PublishStream")
    assert stream is not None
    # Opened before any message exists: publishers in, readers out.
    assert stream.check(AI_DOMAIN, None) is None
    assert stream.check(READER_USER, None) is not None
    # Then per event, by the servicer.
    assert stream.refuse_owned(AI_DOMAIN, ["ai_domain"]) is None
    refused = stream.refuse_owned(EVIL_DOMAIN, ["ai_domain"])
    assert refused is not None
    assert "source_domain='ai_domain'" in refused


def test_reads_need_any_authenticated_principal() -> None:
    rule = rule_for("/grace.eventbus.v1.EventBusService/GetHistory")
    assert rule is not None
    assert rule.check(None, None) == "unauthenticated"
    assert rule.check(READER_USER, None) is None
    assert rule.check(AI_DOMAIN, None) is None


def test_only_components_append_to_the_immutable_log() -> None:
    rule = rule_for("/grace.kernels.immutable_log.v1.ImmutableLogService/Append")
    assert rule is not None
    assert rule.check(OPERATOR_USER, None) is not None
    assert rule.check(AI_DOMAIN, None) is not None
    assert rule.check(COMPONENT_GUARDIAN, None) is None
