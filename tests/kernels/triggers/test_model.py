"""Rules: parsing with named errors, JMESPath conditions and input mappings."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.errors import InvalidArgument
from services.kernels.triggers.model import ActionKind, event_document, firing_id, parse_rule


def rule(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "rule_id": "big-docs",
        "pattern": "document.*",
        "condition": "data.size > `1000`",
        "action": "workflow",
        "target": {"workflow_id": "document"},
    }
    data.update(overrides)
    return data


def event(event_type: str = "document.uploaded", **data: Any) -> dict[str, Any]:
    return event_document("ev-1", event_type, "library", "doc-7", 1.0, data)


def test_a_condition_on_the_event_data_decides_whether_the_rule_applies() -> None:
    r = parse_rule(rule())
    assert r.applies_to(event(size=5000))
    assert not r.applies_to(event(size=10))
    assert not r.applies_to(event(name="no size"))


def test_the_pattern_must_match_the_event_type() -> None:
    r = parse_rule(rule(condition=""))
    assert r.applies_to(event("document.uploaded"))
    assert not r.applies_to(event("invoice.uploaded"))


def test_a_condition_holds_when_its_value_is_truthy_in_jmespath_terms() -> None:
    r = parse_rule(rule(condition="data.tags[?@ == 'urgent']"))
    assert r.applies_to(event(tags=["x", "urgent"]))
    assert not r.applies_to(event(tags=["x"]))
    assert not r.applies_to(event(tags=[]))


def test_conditions_can_read_the_source_and_subject() -> None:
    r = parse_rule(rule(condition="source == 'library' && subject == 'doc-7'"))
    assert r.applies_to(event())
    assert not r.applies_to(event_document("e", "document.x", "other", "doc-7", 1.0, {}))


def test_a_disabled_rule_applies_to_nothing() -> None:
    assert not parse_rule(rule(condition="", enabled=False)).applies_to(event())


def test_the_input_mapping_shapes_the_action_input_from_the_event() -> None:
    r = parse_rule(rule(input={"document_id": "subject", "bytes": "data.size", "who": "source"}))
    assert r.action_input(event(size=3)) == {"document_id": "doc-7", "bytes": 3, "who": "library"}


def test_without_a_mapping_the_action_gets_the_event_data() -> None:
    assert parse_rule(rule()).action_input(event(size=3, name="a")) == {"size": 3, "name": "a"}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"condition": "data.size >"}, "condition"),
        ({"input": {"x": "data..y"}}, "input.x"),
        ({"action": "launch"}, "action"),
        ({"target": {}}, "target.workflow_id"),
        ({"target": {"workflow_id": "w", "extra": "x"}}, "target.extra"),
        ({"pattern": "bad pattern"}, "pattern"),
        ({"min_trust": 1.5}, "min_trust"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"risk_level": "extreme"}, "risk_level"),
        ({"rule_id": ""}, "rule_id"),
        ({"colour": "red"}, "colour"),
        ({"action": "domain", "target": {"action": "a"}}, "target"),
        ({"action": "event", "target": {"event_type": "bad type!"}}, "target.event_type"),
    ],
)
def test_a_bad_rule_is_refused_naming_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_rule(rule(**overrides))
    assert caught.value.field == field


def test_a_rule_round_trips_through_plain_data() -> None:
    r = parse_rule(rule(action="domain", target={"capability": "ocr", "action": "scan"}))
    assert r.action is ActionKind.DOMAIN
    assert parse_rule(r.to_json()) == r
    assert r.resource() == "domain:capability:ocr/scan"


def test_expressions_cannot_call_python() -> None:
    # JMESPath has no eval or attribute access: a dunder is just a missing key.
    r = parse_rule(rule(condition="data.__class__"))
    assert not r.applies_to(event(size=1))


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_firing_ids_differ_for_different_event_and_rule_pairs(a: str, b: str) -> None:
    assert firing_id(a, b) == firing_id(a, b)
    if a != b:
        assert firing_id(a, b) != firing_id(b, a)
