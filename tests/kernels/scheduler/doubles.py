"""Test doubles of the scheduler's peers and clock."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from services.common.action_peers import ActionFailed
from services.common.governance_client import GateDecision
from services.common.outbox import OutboxEvent


class FakeClock:
    """A wall clock that moves only when told."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingPeers:
    """Records every call; workflows start executions named after their request id, which
    the orchestrator would deduplicate, so a repeated key shows up as a repeated start."""

    def __init__(self, *, fail: str = "", block: asyncio.Event | None = None) -> None:
        self.fail = fail
        self.block = block
        self.workflows: list[tuple[str, dict[str, Any], str]] = []
        self.domain_calls: list[tuple[dict[str, Any], dict[str, Any], str]] = []
        self.running: set[str] = set()

    async def start_workflow(
        self, workflow_id: str, data: dict[str, Any], request_id: str
    ) -> dict[str, Any]:
        if self.block is not None:
            await self.block.wait()
        if self.fail:
            raise ActionFailed(self.fail)
        self.workflows.append((workflow_id, data, request_id))
        return {"execution_id": f"exec-{request_id}", "workflow_id": workflow_id}

    async def execution_running(self, execution_id: str) -> bool:
        return execution_id in self.running

    async def call_domain(
        self, params: dict[str, Any], data: dict[str, Any], idempotency_key: str
    ) -> dict[str, Any]:
        if self.fail:
            raise ActionFailed(self.fail)
        self.domain_calls.append((params, data, idempotency_key))
        return {"domain_id": params.get("domain_id", "picked"), "output": {"ok": True}}

    async def create_task(self, params: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        raise ActionFailed("no tasks service is configured")


class ScriptedGate:
    """Allows everything unless the actor is listed as denied; records what it was asked."""

    def __init__(self, denied_actors: set[str] | None = None) -> None:
        self.denied = denied_actors or set()
        self.asked: list[dict[str, Any]] = []

    async def check(
        self,
        actor: str,
        action: str,
        resource: str = "",
        *,
        risk_level: str = "medium",
        context: Mapping[str, Any] | None = None,
        request_id: str = "",
    ) -> GateDecision:
        self.asked.append(
            {
                "actor": actor,
                "action": action,
                "resource": resource,
                "risk_level": risk_level,
                "context": dict(context or {}),
            }
        )
        if actor in self.denied:
            return GateDecision(False, "deny", "dec-deny", reasons=("owner is not allowed",))
        return GateDecision(True, "allow", f"dec-{len(self.asked)}")


class ListPublisher:
    """Collects what an outbox relay publishes (the bus, the immutable log)."""

    def __init__(self) -> None:
        self.events: list[OutboxEvent] = []

    async def publish(self, events: Sequence[OutboxEvent]) -> None:
        self.events.extend(events)
