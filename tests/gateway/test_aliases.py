"""The seeds' payload shapes map onto the canonical requests at the edge, and only there."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.aliases import ANONYMOUS, caller_principal, has_aliases, rewrite_body
from gateway.errors import HttpError

CREATE = "grace.orchestrator.v1.OrchestratorService.CreateWorkflow"
HEAL = "grace.guardian.v1.GuardianService.Heal"
PUBLISH = "grace.eventbus.v1.EventBusService.Publish"


def rewrite(method: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return json.loads(rewrite_body(method, json.dumps(body).encode(), headers or {}))


def test_seed_step_shapes_become_the_canonical_step() -> None:
    got = rewrite(
        CREATE,
        {
            "name": "document_processing",
            "steps": [
                {"domain": "data_domain", "action": "ingest_document", "data": "a text"},
                {"domain": "ai_domain", "action": "analyze_content", "depends_on": "step_1"},
                {"domain": "diagnostics", "action": "scan", "data": [1, 2]},
            ],
        },
    )
    assert got["steps"] == [
        {"domain_id": "data_domain", "action": "ingest_document", "data": {"value": "a text"}},
        {"domain_id": "ai_domain", "action": "analyze_content", "depends_on": ["step_1"]},
        {"capability": "diagnostics", "action": "scan", "data": {"value": [1, 2]}},
    ]


def test_a_canonical_body_passes_unchanged() -> None:
    body = {"name": "w", "steps": [{"domain_id": "a", "action": "b", "depends_on": ["x"]}]}
    assert rewrite(CREATE, body) == body


def test_an_alias_beside_its_canonical_field_is_refused_naming_it() -> None:
    with pytest.raises(HttpError) as refused:
        rewrite(CREATE, {"steps": [{"domain": "a", "domain_id": "a", "action": "b"}]})
    assert refused.value.http_status == 400
    assert "steps[0].domain" in refused.value.message


def test_the_seed_003_healing_body_names_the_playbook_and_records_the_reason() -> None:
    got = rewrite(
        HEAL,
        {
            "component_name": "librarian_kernel",
            "port": 8130,
            "issue_type": "port_not_listening",
            "action": "restart_component",
        },
    )
    assert got == {
        "component_name": "librarian_kernel",
        "playbook": "restart_component",
        "reason": "port_not_listening on port 8130",
    }


def test_a_healing_port_that_is_not_a_port_is_refused() -> None:
    with pytest.raises(HttpError) as refused:
        rewrite(HEAL, {"component_name": "x", "port": "eighty"})
    assert refused.value.message.startswith("port:")


def test_an_event_without_a_source_is_published_as_the_caller() -> None:
    event = {"event_type": "healing.completed", "data": {"success": True}}
    assert rewrite(PUBLISH, event)["source_domain"] == ANONYMOUS
    assert rewrite(PUBLISH, event, {"x-actor": "healer"})["source_domain"] == "healer"
    assert rewrite(PUBLISH, {**event, "source_domain": "ai_domain"})["source_domain"] == "ai_domain"


def test_the_caller_is_anonymous_unless_x_actor_is_a_domain_id() -> None:
    assert caller_principal({"x-actor": "user:alice"}) == ANONYMOUS
    assert caller_principal({"x-actor": "x" * 129}) == ANONYMOUS
    assert caller_principal({"x-actor": "ai_domain"}) == "ai_domain"


def test_methods_without_aliases_are_left_alone() -> None:
    assert not has_aliases("grace.registry.v1.RegistryService.RegisterDomain")
    body = b'{"domain": "kept"}'
    assert rewrite_body("grace.registry.v1.RegistryService.RegisterDomain", body, {}) == body
    assert rewrite_body(CREATE, b"[1, 2]", {}) == b"[1, 2]"
