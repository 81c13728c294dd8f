"""Declaring a domain: decorators, names, handler lookup, and mistakes caught early."""

from __future__ import annotations

from typing import Any

import pytest

from services.sdk import Context, Domain, Event
from tests.sdk.conftest import Probe, counting_domain


async def noop(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
    return {}


def test_actions_are_declared_with_their_descriptions_and_compensations() -> None:
    domain = counting_domain(Probe())
    assert list(domain.actions) == ["echo", "slow", "flaky"]
    assert domain.actions["echo"].description == "Returns its input with a run number"
    assert domain.actions["slow"].description == "Waits until the test releases it."
    assert domain.actions["echo"].compensation is not None
    assert domain.actions["slow"].compensation is None
    assert domain.event_patterns == ["ml.*"]


def test_an_action_defaults_to_the_function_name_and_stacks_aliases() -> None:
    domain = Domain("d1")

    @domain.action("search")
    @domain.action()
    async def search_similar(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
        return {}

    assert domain.actions["search"].function is domain.actions["search_similar"].function


def test_a_compensation_may_come_before_its_action() -> None:
    domain = Domain("d1")

    @domain.compensate("ingest")
    async def delete(ctx: Context, data: dict[str, Any], output: dict[str, Any]) -> None:
        return None

    with pytest.raises(ValueError, match="undeclared action"):
        domain.check()
    domain.action("ingest")(noop)
    domain.check()
    assert domain.actions["ingest"].compensation is delete


@pytest.mark.parametrize(
    ("declare", "error"),
    [
        (lambda d: d.action("echo")(noop), "declared twice"),
        (lambda d: d.action("bad name")(noop), "must be 1-128"),
        (lambda d: d.on_event("ml.?"), "may contain only"),
        (lambda d: d.compensate("echo")(noop), "two compensations"),
    ],
)
def test_declaration_mistakes_are_refused_with_a_clear_message(declare: Any, error: str) -> None:
    domain = counting_domain(Probe())
    with pytest.raises(ValueError, match=error):
        declare(domain)


def test_functions_must_be_async() -> None:
    domain = Domain("d1")

    def sync(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
        return {}

    with pytest.raises(TypeError, match="must be async def"):
        domain.action("sync")(sync)  # type: ignore[arg-type]  # the mistake under test


def test_a_bad_domain_id_or_capability_is_refused() -> None:
    with pytest.raises(ValueError, match="domain_id"):
        Domain("-nope")
    with pytest.raises(ValueError, match="capability"):
        Domain("ok", capabilities=["has space"])


def test_handlers_are_found_by_subscription_pattern_or_by_matching_the_event_type() -> None:
    domain = Domain("d1")

    async def on_ml(ctx: Context, event: Event) -> None:
        return None

    async def on_all(ctx: Context, event: Event) -> None:
        return None

    domain.on_event("ml.*")(on_ml)
    domain.on_event("*")(on_all)
    assert [h.name for h in domain.handlers_for("ml.prediction")] == ["on_ml", "on_all"]
    assert [h.name for h in domain.handlers_for("ml.prediction", "*")] == ["on_all"]
    assert [h.name for h in domain.handlers_for("auth.login")] == ["on_all"]
    # An unknown subscription pattern falls back to matching.
    assert [h.name for h in domain.handlers_for("auth.login", "gone.*")] == ["on_all"]
