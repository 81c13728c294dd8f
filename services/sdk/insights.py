"""Insights from the learning kernel, as a domain receives them.

The learning kernel announces each pattern it finds as an `insight.<kind>` event (kinds:
failure, latency, degradation, retries) whose data names the domain and action it is
about, that domain's capabilities and the shared-memory contribution holding the
evidence. `@domain.on_insight(capability=..., action=..., kind=...)` subscribes to them
and calls the handler with the `Insight` for those that match; the handler applies it
(adjusts a setting, say) and reports how that went with
`ctx.memory.apply(insight.contribution_id, success=...)`, so the contribution's confidence
follows the results.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from services.sdk.context import Context, Event, Outcome

EVENT_PREFIX = "insight."
KINDS = ("failure", "latency", "degradation", "retries")


@dataclass(frozen=True)
class Insight:
    """A pattern the learning kernel found.

    Attributes:
        pattern_id: Stable id of the pattern.
        domain: Domain whose action it is about.
        action: The action.
        kind: failure | latency | degradation | retries.
        factor: What it depends on (hour_of_day, weekday, input_size, in_flight,
            requests_since_start, attempt).
        bucket: The bucket of the factor, for example "4096-8191 bytes".
        summary: One sentence.
        recommendation: What to do about it.
        evidence: Counts, rates, intervals and the test statistic.
        capabilities: The capabilities of `domain`.
        contribution_id: The shared-memory contribution ("" when memory was off).
        contribution_type: failed_patterns | optimization | insight.
    """

    pattern_id: str
    domain: str
    action: str
    kind: str
    factor: str
    bucket: str
    summary: str
    recommendation: str
    evidence: dict[str, Any]
    capabilities: tuple[str, ...]
    contribution_id: str
    contribution_type: str

    @classmethod
    def from_event(cls, event: Event) -> Insight | None:
        """The insight an event carries, or None when it is not one."""
        if not event.event_type.startswith(EVENT_PREFIX):
            return None
        data = event.data
        try:
            return cls(
                pattern_id=str(data["id"]),
                domain=str(data["domain"]),
                action=str(data["action"]),
                kind=str(data["kind"]),
                factor=str(data.get("factor", "")),
                bucket=str(data.get("bucket", "")),
                summary=str(data.get("summary", "")),
                recommendation=str(data.get("recommendation", "")),
                evidence=dict(data.get("evidence") or {}),
                capabilities=tuple(str(c) for c in data.get("capabilities") or ()),
                contribution_id=str(data.get("contribution_id", "")),
                contribution_type=str(data.get("contribution_type", "")),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def concerns(self, capability: str | None, action: str | None, kind: str | None) -> bool:
        """Whether it matches the filters (None matches anything)."""
        return (
            (capability is None or capability in self.capabilities)
            and (action is None or action == self.action)
            and (kind is None or kind == self.kind)
        )


InsightFunction: TypeAlias = Callable[[Context, Insight], Awaitable[Outcome | None]]


def insight_handler(
    function: InsightFunction, capability: str | None, action: str | None, kind: str | None
) -> Callable[[Context, Event], Awaitable[Outcome | None]]:
    """An event handler calling `function` with the insights that match (others are
    acknowledged untouched: they concern someone else)."""

    async def handle(ctx: Context, event: Event) -> Outcome | None:
        insight = Insight.from_event(event)
        if insight is None or not insight.concerns(capability, action, kind):
            return None
        return await function(ctx, insight)

    handle.__name__ = getattr(function, "__name__", "on_insight")
    return handle
