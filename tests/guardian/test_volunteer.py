"""Guardian volunteers for the domains the health federation confirms down."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from grace.eventbus.v1 import event_pb2
from services.common.errors import PermissionDenied
from services.guardian.journal import Journal
from services.guardian.playbooks import RESTART_COMPONENT, Healer
from services.guardian.volunteer import RecoveryVolunteer


@dataclass
class RecordingHealer:
    """Records heals; refuses them when told to (as governance would)."""

    refuse: bool = False
    heals: list[dict[str, Any]] = field(default_factory=list)

    async def heal(self, name: str, playbook: str = "", **kwargs: Any) -> object:
        self.heals.append({"name": name, "playbook": playbook, **kwargs})
        if self.refuse:
            raise PermissionDenied("governance denied heal:restart_component")

        @dataclass
        class Result:
            message: str = "restarted"

        return Result()


def confirmation(domain_id: str, *, source: str = "registry") -> event_pb2.Event:
    event = event_pb2.Event(
        event_type="domain.down_confirmed", source_domain=source, subject=domain_id
    )
    event.data.update({"domain_id": domain_id, "confirming": ["a", "b"], "incarnation": 7})
    return event


def volunteer(healer: RecordingHealer) -> RecoveryVolunteer:
    return RecoveryVolunteer(
        cast(Healer, healer), Journal(None), lambda: ["ai_domain"], lambda: "127.0.0.1:9"
    )


async def test_a_confirmed_domain_guardian_runs_is_restarted_as_a_governed_heal() -> None:
    healer = RecordingHealer()
    assert await volunteer(healer).handle(confirmation("ai_domain"))
    assert healer.heals == [
        {
            "name": "ai_domain",
            "playbook": RESTART_COMPONENT,
            "actor": "guardian",
            "reason": "domain.down_confirmed: confirmed by a, b",
        }
    ]


@pytest.mark.parametrize(
    "event",
    [confirmation("stranger_domain"), confirmation("ai_domain", source="someone_else")],
    ids=["not run by guardian", "not from the registry"],
)
async def test_confirmations_guardian_must_not_act_on_are_left_alone(
    event: event_pb2.Event,
) -> None:
    healer = RecordingHealer()
    assert not await volunteer(healer).handle(event)
    assert healer.heals == []


async def test_a_heal_governance_refuses_does_not_stop_the_volunteer() -> None:
    healer = RecordingHealer(refuse=True)
    chosen = volunteer(healer)
    assert await chosen.handle(confirmation("ai_domain"))
    assert await chosen.handle(confirmation("ai_domain"))
    assert len(healer.heals) == 2
