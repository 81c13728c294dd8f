"""Policies as JSON objects: how the store keeps them and how policy files write them.

A policy file is JSON (`{"policies": [...]}`) or TOML (`[[policies]]` tables); each policy
has the fields of `Policy.body()`, with enums in lower case:

    [[policies]]
    policy_id = "restart-needs-approval"
    description = "Restarts of core services wait for an operator"
    principal = "immune"
    action = "heal:restart_component"
    resource = "component:registry"
    effect = "require_approval"            # permit | forbid | require_approval
    min_risk_level = "medium"              # optional: low | medium | high | critical
    mode = "enforce"                       # optional: log_only | enforce (default: global)
    conditions = [{ attribute = "score", operator = "gt", value = 10 }]
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from services.common.errors import InvalidArgument
from services.kernels.governance.model import Condition, Effect, Mode, Operator, Policy, RiskLevel


def _enum(field: str, kind: type[Any], value: Any) -> Any:
    try:
        return kind(str(value).strip().lower())
    except ValueError:
        names = ", ".join(m.value for m in kind)
        raise InvalidArgument(field, f"must be one of {names}, not {value!r}") from None


def policy_from_json(
    data: Mapping[str, Any],
    *,
    version: int = 0,
    created_at: float = 0.0,
    updated_at: float = 0.0,
    field: str = "policy",
) -> Policy:
    """A policy from its JSON form; InvalidArgument names what is wrong (not validated
    beyond types: call `policy.validate_policy` too)."""
    if not isinstance(data, Mapping):
        raise InvalidArgument(field, "must be an object")
    conditions = data.get("conditions") or []
    if not isinstance(conditions, list):
        raise InvalidArgument(f"{field}.conditions", "must be a list")
    parsed: list[Condition] = []
    for i, c in enumerate(conditions):
        if not isinstance(c, Mapping):
            raise InvalidArgument(f"{field}.conditions[{i}]", "must be an object")
        parsed.append(
            Condition(
                attribute=str(c.get("attribute", "")),
                operator=_enum(f"{field}.conditions[{i}].operator", Operator, c.get("operator")),
                value=c.get("value"),
            )
        )
    risk = data.get("min_risk_level")
    mode = data.get("mode")
    try:
        min_risk = RiskLevel.parse(str(risk)) if risk else None
    except ValueError as exc:
        raise InvalidArgument(f"{field}.min_risk_level", str(exc)) from None
    return Policy(
        policy_id=str(data.get("policy_id", "")),
        effect=_enum(f"{field}.effect", Effect, data.get("effect")),
        description=str(data.get("description", "")),
        principal=str(data.get("principal") or "*"),
        action=str(data.get("action") or "*"),
        resource=str(data.get("resource") or "*"),
        conditions=tuple(parsed),
        min_risk_level=min_risk,
        mode=_enum(f"{field}.mode", Mode, mode) if mode else None,
        version=version,
        created_at=created_at,
        updated_at=updated_at,
    )


def read_policy_file(path: Path) -> list[Policy]:
    """The policies of a JSON or TOML file (by extension); InvalidArgument on bad content."""
    raw = path.read_bytes()
    try:
        document = (
            tomllib.loads(raw.decode()) if path.suffix.lower() == ".toml" else json.loads(raw)
        )
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(str(path), f"is not valid {path.suffix or 'JSON'}: {exc}") from None
    items = document.get("policies") if isinstance(document, dict) else document
    if not isinstance(items, list):
        raise InvalidArgument(str(path), "must hold a list of policies under 'policies'")
    return [
        policy_from_json(item, field=f"{path.name}.policies[{i}]") for i, item in enumerate(items)
    ]
