"""The seeds' payload shapes, accepted at the edge and rewritten into the canonical requests.

The design documents (seeds 000, 001 and 003) show JSON bodies that differ slightly from the
proto contracts. The contracts stay as they are; this module, and only this module, maps
the seeds' shapes onto them before the gateway builds the gRPC request. Each alias belongs
to one gRPC method and changes nothing a canonical body says: a body that already uses the
canonical names passes unchanged, and a body that sets both an alias and its canonical
field is refused (400), so there is never a doubt about which one counted.

- `CreateWorkflow`, per step:
  - `"domain": "ai_domain"` -> `"domain_id": "ai_domain"`; but `"domain": "diagnostics"`
    (also `healing`, `verification`) -> `"capability": ...`: those seed names are
    capabilities (the immune kernel serves them), not domains;
  - `"depends_on": "step_1"` -> `"depends_on": ["step_1"]`;
  - `"data": <not an object>` (a string, a list, a number) -> `"data": {"value": <it>}`.
- `Heal`: `"action": "restart_component"` -> `"playbook": "restart_component"`;
  `"issue_type": "port_not_listening", "port": 8130` ->
  `"reason": "port_not_listening on port 8130"` (recorded with the heal).
- `Publish`: no `source_domain` -> `"source_domain": caller_principal(...)`.

`caller_principal` is the one place that says who the caller is: today the `X-Actor`
header when it is a valid domain id, else `anonymous` (the actor governance also records
for a request without `X-Actor`). Authentication will make it the authenticated principal.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from gateway.errors import bad_request
from gateway.transcode import TranscodeError, loads
from services.common.access import Principal
from services.common.validation import ID_PATTERN

ANONYMOUS = "anonymous"
MAX_ID_LENGTH = 128
# The seed names a workflow step's `domain` that are capabilities rather than domain ids
# (seed 000, "With Guardian": the full_system_heal workflow).
SEED_CAPABILITIES = frozenset({"diagnostics", "healing", "verification"})
# Key under which a step's non-object `data` is wrapped.
WRAPPED_DATA_KEY = "value"

Document = dict[str, Any]
Rewrite = Callable[[Document, Mapping[str, str]], Document]


def source_of(principal: Principal) -> str:
    """The source an authenticated caller publishes as when a seed omits it: the domain it
    is (a join token or certificate), the component, else its own name when that is a
    valid id ("anonymous" otherwise)."""
    if len(principal.domains) == 1:
        return next(iter(principal.domains))
    name = principal.name.removeprefix("component:")
    valid = 0 < len(name) <= MAX_ID_LENGTH and ID_PATTERN.fullmatch(name)
    return name if valid else ANONYMOUS


def caller_principal(headers: Mapping[str, str]) -> str:
    """Who sent the request, as a domain id, in an insecure Grace: the `X-Actor` header
    when it is a valid id, else "anonymous" (a secure one uses `source_of` the principal)."""
    actor = headers.get("x-actor", "").strip()
    valid = 0 < len(actor) <= MAX_ID_LENGTH and ID_PATTERN.fullmatch(actor)
    return actor if valid else ANONYMOUS


def _exclusive(document: Document, alias: str, canonical: str, where: str) -> None:
    if alias in document and canonical in document:
        raise bad_request(
            f"{where}{alias}", f"is the seed's name for {canonical}; send one of the two"
        )


def _workflow_step(step: Any, index: int) -> Any:
    if not isinstance(step, dict):
        return step
    step = dict(step)
    where = f"steps[{index}]."
    if "domain" in step:
        for canonical in ("domain_id", "capability"):
            _exclusive(step, "domain", canonical, where)
        target = step.pop("domain")
        key = "capability" if target in SEED_CAPABILITIES else "domain_id"
        step[key] = target
    depends_on = step.get("depends_on")
    if isinstance(depends_on, str):
        step["depends_on"] = [depends_on]
    if "data" in step and not isinstance(step["data"], dict) and step["data"] is not None:
        step["data"] = {WRAPPED_DATA_KEY: step["data"]}
    return step


def _create_workflow(document: Document, headers: Mapping[str, str]) -> Document:
    steps = document.get("steps")
    if not isinstance(steps, list):
        return document
    return {**document, "steps": [_workflow_step(s, i) for i, s in enumerate(steps)]}


def _heal(document: Document, headers: Mapping[str, str]) -> Document:
    document = dict(document)
    if "action" in document:
        _exclusive(document, "action", "playbook", "")
        document["playbook"] = document.pop("action")
    issue = document.pop("issue_type", None)
    port = document.pop("port", None)
    if issue is None and port is None:
        return document
    _exclusive({**document, "issue_type": issue}, "issue_type", "reason", "")
    if port is not None and (not isinstance(port, int) or not 0 < port < 65536):
        raise bad_request("port", "must be a port number (1-65535)")
    parts = [str(issue) if issue else "issue"]
    if port is not None:
        parts.append(f"on port {port}")
    document["reason"] = " ".join(parts)
    return document


def _publish(document: Document, headers: Mapping[str, str]) -> Document:
    if document.get("source_domain") or document.get("sourceDomain"):
        return document
    return {**document, "source_domain": caller_principal(headers)}


ALIASES: Mapping[str, Rewrite] = {
    "grace.orchestrator.v1.OrchestratorService.CreateWorkflow": _create_workflow,
    "grace.guardian.v1.GuardianService.Heal": _heal,
    "grace.eventbus.v1.EventBusService.Publish": _publish,
}


def has_aliases(method_full_name: str) -> bool:
    """True when the method accepts seed shapes (its body is rewritten)."""
    return method_full_name in ALIASES


def rewrite_body(method_full_name: str, body: bytes, headers: Mapping[str, str]) -> bytes:
    """The request body with the method's seed shapes mapped to the canonical fields.

    A body that is not a JSON object is returned unchanged (the transcoder reports it).

    Raises:
        HttpError: 400 when a body sets both an alias and its canonical field, or an alias
            value is malformed.
    """
    rewrite = ALIASES.get(method_full_name)
    if rewrite is None or not body.strip():
        return body
    try:
        # The transcoder's own parser: bounded depth, no NaN (its errors are reported there).
        document = loads(body, "body")
    except TranscodeError:
        return body
    if not isinstance(document, dict):
        return body
    return json.dumps(rewrite(document, headers)).encode()
