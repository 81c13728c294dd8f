"""What a handler gets: the call's context, the event it handles, and how it answers.

Actions and compensations receive a `Context`; event handlers receive a `Context` and an
`Event`. An event handler answers by returning normally (ACK), by raising `Retry` or
`Drop`, or by returning an `Outcome`.
"""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from services.sdk.memory import MemoryClient
    from services.sdk.store import KeyValueStore

# Namespace of the event ids derived from idempotency keys (see Context.publish).
_EVENT_ID_NAMESPACE = uuid.UUID("8b0f7d4e-5f3a-4d8e-9a51-2f1c7e0b6a93")


class Outcome(enum.Enum):
    """An event handler's answer to the bus."""

    ACK = "ack"
    """Processed; do not deliver again."""
    RETRY = "retry"
    """Not processed now; deliver again after a backoff."""
    DROP = "drop"
    """Will never be processed; dead-letter it without retrying."""


class Retry(Exception):
    """Raised by an event handler: deliver this event again later.

    Args:
        reason: Why; kept by the bus.
        after_s: Wait at least this long before the next attempt; None uses the bus's
            backoff.
    """

    def __init__(self, reason: str = "", *, after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.after_s = after_s


class Drop(Exception):
    """Raised by an event handler: this event will never be processed; dead-letter it.

    Args:
        reason: Why; kept with the dead letter.
    """

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Event:
    """An event delivered to a handler.

    Attributes:
        id: Unique id within the source.
        event_type: Dotted type, for example "ml.prediction".
        source_domain: Domain that published it.
        data: Payload (JSON numbers arrive as floats).
        time: When it happened, epoch seconds (0 when unknown).
        subject: Optional subject within the source.
        sequence: Position in the bus's log.
        traceparent: W3C trace context of the producer.
    """

    id: str
    event_type: str
    source_domain: str
    data: dict[str, Any]
    time: float = 0.0
    subject: str = ""
    sequence: int = 0
    traceparent: str = ""


class EventSink(Protocol):
    """Where `Context.publish` puts events (the domain's outbox, relayed to the bus)."""

    async def publish(
        self,
        event_type: str,
        data: Mapping[str, Any],
        *,
        event_id: str,
        subject: str,
        traceparent: str,
    ) -> None:
        """Accepts an event durably for publication, or raises."""


@dataclass
class Context:
    """The context of one action, compensation or event delivery.

    Attributes:
        domain_id: This domain's id.
        action: The action (or "event:<type>" for an event handler).
        workflow_id: Workflow of the step; "" for a direct call.
        execution_id: Workflow execution; "" for a direct call.
        step_id: Step id, for example "step_2"; "" for a direct call.
        attempt: Attempt number, 1 for the first (delivery attempt for events).
        idempotency_key: The call's key ("" when the caller sent none). Actions with
            effects outside the domain's result (documents written, knowledge shared)
            should key those effects on it: a call interrupted by a crash before its
            result was stored runs again with the same key.
        traceparent: W3C trace context of the call, carried by published events.
        log: Logger that prefixes every line with the domain, workflow and step.
        store: The domain's durable key-value store.
        memory: Client of the shared memory, acting as this domain.
    """

    domain_id: str
    action: str
    store: KeyValueStore
    memory: MemoryClient
    workflow_id: str = ""
    execution_id: str = ""
    step_id: str = ""
    attempt: int = 1
    idempotency_key: str = ""
    traceparent: str = ""
    log: logging.LoggerAdapter[logging.Logger] = field(init=False)
    _events: EventSink | None = field(default=None, repr=False)
    _published: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        where = self.domain_id
        if self.workflow_id or self.step_id:
            where += f" {self.execution_id or self.workflow_id}/{self.step_id}#{self.attempt}"
        self.log = _PrefixAdapter(
            logging.getLogger(f"grace.domain.{self.domain_id}"), {"where": where}
        )

    @property
    def events_enabled(self) -> bool:
        """True when this domain publishes to an event bus."""
        return self._events is not None

    async def publish(self, event_type: str, data: Mapping[str, Any], *, subject: str = "") -> str:
        """Publishes an event from this domain, with the call's trace context.

        The event is stored in the domain's outbox before this returns and reaches the bus
        as soon as the bus accepts it, even if the bus is down now. Within a call with an
        idempotency key, the n-th event gets an id derived from the key, so a call that
        runs again after a crash publishes duplicates the bus recognizes.
        When the domain runs with the event bus off, nothing is sent (logged at debug).

        Args:
            event_type: Dotted type, for example "ml.analysis_complete".
            data: JSON-compatible payload.
            subject: Optional subject within this domain.

        Returns:
            The event's id.
        """
        self._published += 1
        if self.idempotency_key:
            name = f"{self.domain_id}|{self.action}|{self.idempotency_key}|{self._published}"
            event_id = str(uuid.uuid5(_EVENT_ID_NAMESPACE, name))
        else:
            event_id = str(uuid.uuid4())
        if self._events is None:
            self.log.debug("event bus off: %s %s not published", event_type, event_id)
            return event_id
        await self._events.publish(
            event_type, data, event_id=event_id, subject=subject, traceparent=self.traceparent
        )
        return event_id


class _PrefixAdapter(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        where = self.extra["where"] if self.extra else ""
        return f"[{where}] {msg}", kwargs
