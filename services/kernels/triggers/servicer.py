"""gRPC adapter of the trigger mesh: proto in, core call, proto out."""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

from grace.kernels.triggers.v1 import triggers_pb2 as pb
from grace.kernels.triggers.v1 import triggers_pb2_grpc
from services.common.domain_router import to_struct
from services.common.errors import InvalidArgument, NotFound
from services.common.pagination import decode_token, encode_token, page_size
from services.common.timestamps import to_timestamp
from services.common.validation import require_id
from services.kernels.triggers.mesh import TriggerMesh
from services.kernels.triggers.model import Firing, FiringState, Rule

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


def rule_to_proto(rule: Rule) -> pb.Rule:
    """The wire form of a rule."""
    return pb.Rule(
        rule_id=rule.rule_id,
        pattern=rule.pattern,
        condition=rule.condition,
        action=rule.action.value,
        target=dict(rule.target),
        input=dict(rule.input),
        min_trust=rule.min_trust,
        risk_level=rule.risk_level,
        max_attempts=rule.max_attempts,
        disabled=not rule.enabled,
        description=rule.description,
        version=rule.version,
        origin=rule.origin,
    )


def rule_data(message: pb.Rule) -> dict[str, Any]:
    """A rule's plain data from its wire form (what `parse_rule` reads)."""
    return {
        "rule_id": message.rule_id,
        "pattern": message.pattern,
        "condition": message.condition,
        "action": message.action,
        "target": dict(message.target),
        "input": dict(message.input),
        "min_trust": message.min_trust,
        "risk_level": message.risk_level or "medium",
        "max_attempts": message.max_attempts or 5,
        "enabled": not message.disabled,
        "description": message.description,
    }


def firing_to_proto(firing: Firing) -> pb.Firing:
    """The wire form of a firing."""
    data = firing.to_json()
    return pb.Firing(
        firing_id=firing.firing_id,
        rule_id=firing.rule_id,
        rule_version=firing.rule_version,
        event_id=str(data["event_id"]),
        event_type=str(data["event_type"]),
        source=str(data["source"]),
        state=firing.state.value,
        attempts=firing.attempts,
        created_at=to_timestamp(firing.created_at),
        updated_at=to_timestamp(firing.updated_at),
        result=to_struct(dict(firing.result)),
    )


class TriggersServicer(triggers_pb2_grpc.TriggersServiceServicer):
    """Serves `grace.kernels.triggers.v1.TriggersService` over a `TriggerMesh`."""

    def __init__(self, mesh: TriggerMesh) -> None:
        self._mesh = mesh

    async def PutRule(self, request: pb.PutRuleRequest, context: Context) -> pb.PutRuleResponse:
        if not request.HasField("rule"):
            raise InvalidArgument("rule", "is required")
        if request.expected_version < 0:
            raise InvalidArgument("expected_version", "must not be negative")
        rule = await self._mesh.put_rule(rule_data(request.rule), request.expected_version)
        return pb.PutRuleResponse(rule=rule_to_proto(rule))

    async def GetRule(self, request: pb.GetRuleRequest, context: Context) -> pb.GetRuleResponse:
        require_id("rule_id", request.rule_id)
        rule = await self._mesh.store.get_rule(request.rule_id)
        if rule is None:
            raise NotFound("rule", request.rule_id)
        return pb.GetRuleResponse(rule=rule_to_proto(rule))

    async def ListRules(
        self, request: pb.ListRulesRequest, context: Context
    ) -> pb.ListRulesResponse:
        limit = page_size(request.page_size)
        after = str((decode_token(request.page_token) or {}).get("after", ""))
        rules = [r for r in await self._mesh.store.rules() if r.rule_id > after]
        page = rules[:limit]
        token = encode_token({"after": page[-1].rule_id}) if len(rules) > limit else ""
        return pb.ListRulesResponse(rules=[rule_to_proto(r) for r in page], next_page_token=token)

    async def DeleteRule(
        self, request: pb.DeleteRuleRequest, context: Context
    ) -> pb.DeleteRuleResponse:
        require_id("rule_id", request.rule_id)
        if request.expected_version < 0:
            raise InvalidArgument("expected_version", "must not be negative")
        gone = await self._mesh.delete_rule(request.rule_id, request.expected_version)
        return pb.DeleteRuleResponse(version=gone.version)

    async def ListFirings(
        self, request: pb.ListFiringsRequest, context: Context
    ) -> pb.ListFiringsResponse:
        if request.rule_id:
            require_id("rule_id", request.rule_id)
        states: list[FiringState] = []
        if request.state:
            try:
                states = [FiringState(request.state)]
            except ValueError:
                raise InvalidArgument(
                    "state", f"must be one of {', '.join(s.value for s in FiringState)}"
                ) from None
        limit = page_size(request.page_size)
        position = decode_token(request.page_token)
        before = int(position["before"]) if position and "before" in position else None
        rows = await self._mesh.store.list_firings(
            rule_id=request.rule_id, states=states, before=before, limit=limit + 1
        )
        page = rows[:limit]
        token = encode_token({"before": page[-1][0]}) if len(rows) > limit else ""
        return pb.ListFiringsResponse(
            firings=[firing_to_proto(f) for _, f in page], next_page_token=token
        )

    async def GetFiring(
        self, request: pb.GetFiringRequest, context: Context
    ) -> pb.GetFiringResponse:
        require_id("firing_id", request.firing_id)
        firing = await self._mesh.store.get_firing(request.firing_id)
        if firing is None:
            raise NotFound("firing", request.firing_id)
        return pb.GetFiringResponse(firing=firing_to_proto(firing))
