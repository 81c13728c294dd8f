"""The Grace domain SDK: write a domain in a few lines.

    from services.sdk import Context, Domain, Event

    domain = Domain("ai_domain", capabilities=["ml"], version="1.0.0", port=8202)

    @domain.action("analyze", description="Counts the words of a text")
    async def analyze(ctx: Context, data: dict) -> dict:
        text = field(data, "text", str)
        await ctx.publish("ml.analysis_complete", {"words": len(text.split())})
        return {"words": len(text.split())}

    @domain.on_event("ml.*")
    async def watch(ctx: Context, event: Event) -> None:
        ctx.log.info("%s from %s", event.event_type, event.source_domain)

    if __name__ == "__main__":
        raise SystemExit(domain.run())

The SDK serves `grace.domain.v1.DomainService` on the shared runtime (health, reflection,
tracing, graceful shutdown), registers the domain and heartbeats with measured load,
latency and success rate, replays the first result of a repeated idempotency key (durably),
creates the domain's push subscriptions on the event bus, and hands every function a
`Context` with a logger, `ctx.publish`, `ctx.memory` and `ctx.store`. See docs/sdk.md.
"""

from __future__ import annotations

from services.common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    GraceError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from services.sdk.config import DomainConfig
from services.sdk.context import Context, Drop, Event, Outcome, Retry
from services.sdk.domain import Domain, RunningDomain
from services.sdk.inputs import field
from services.sdk.insights import Insight
from services.sdk.memory import Knowledge, MemoryClient
from services.sdk.store import KeyValueStore

__all__ = [
    "Aborted",
    "AlreadyExists",
    "Context",
    "Domain",
    "DomainConfig",
    "Drop",
    "Event",
    "FailedPrecondition",
    "GraceError",
    "Insight",
    "InvalidArgument",
    "KeyValueStore",
    "Knowledge",
    "MemoryClient",
    "NotFound",
    "Outcome",
    "PermissionDenied",
    "ResourceExhausted",
    "Retry",
    "RunningDomain",
    "Unauthenticated",
    "Unavailable",
    "field",
]
