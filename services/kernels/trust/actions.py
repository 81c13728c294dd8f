"""The trust kernel's actions as a domain (workflow steps). All are read-only.

- `verify` {domain_id, message (text) or message_b64, signature_b64, asking_domain?,
  max_depth?} -> {verified, trusted, trust_path, reason, key_id}.
- `score` {domain_id} -> {score, components: [{name, value, weight, available, detail}]}.
- `identity` {domain_id} -> {domain_id, key_id, public_key_b64, state}.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from services.common.errors import InvalidArgument
from services.kernels.domain import KernelAction
from services.kernels.trust.trust import TrustKernel


def _bytes(data: dict[str, Any], field: str) -> bytes:
    try:
        return base64.b64decode(str(data.get(field, "")), validate=True)
    except binascii.Error:
        raise InvalidArgument(f"input.{field}", "must be standard base64") from None


def trust_actions(kernel: TrustKernel) -> dict[str, KernelAction]:
    """The actions of the trust kernel."""

    async def verify(data: dict[str, Any], key: str) -> dict[str, Any]:
        message = (
            _bytes(data, "message_b64")
            if "message_b64" in data
            else str(data.get("message", "")).encode()
        )
        depth = data.get("max_depth", 0)
        if not isinstance(depth, int | float) or isinstance(depth, bool) or depth != int(depth):
            raise InvalidArgument("input.max_depth", "must be an integer")
        verdict = kernel.verify_message(
            str(data.get("domain_id", "")),
            message,
            _bytes(data, "signature_b64"),
            str(data.get("asking_domain", "")),
            int(depth),
        )
        return {
            "verified": verdict.verified,
            "trusted": verdict.trusted,
            "trust_path": list(verdict.path),
            "reason": verdict.reason,
            "key_id": verdict.key_id,
        }

    async def score(data: dict[str, Any], key: str) -> dict[str, Any]:
        result = await kernel.score(str(data.get("domain_id", "")))
        return {
            "score": result.score,
            "components": [
                {
                    "name": c.name,
                    "value": c.value,
                    "weight": c.weight,
                    "available": c.available,
                    "detail": c.detail,
                }
                for c in result.components
            ],
        }

    async def identity(data: dict[str, Any], key: str) -> dict[str, Any]:
        found = kernel.identity(str(data.get("domain_id", "")))
        current = found.current
        return {
            "domain_id": found.domain_id,
            "key_id": current.key_id if current else "",
            "public_key_b64": base64.b64encode(current.public_key).decode() if current else "",
            "state": current.state.value if current else "revoked",
        }

    return {
        "verify": KernelAction(verify, "Verify a message from a domain (verified, trusted)"),
        "score": KernelAction(score, "The trust score of a domain with its components"),
        "identity": KernelAction(identity, "The current key of a domain"),
    }
