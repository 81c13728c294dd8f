"""What the event bus keeps besides events: settings, subscriptions, consumers, dead letters."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

MAX_PATTERNS = 16
DEFAULT_MAX_BATCH = 1000
DEFAULT_READER_QUEUE_BYTES = 64 * 1024 * 1024


class Start(enum.Enum):
    """Where a reader starts in the log."""

    DEFAULT = "DEFAULT"
    NEW = "NEW"
    ALL = "ALL"
    SEQUENCE = "SEQUENCE"
    TIME = "TIME"


@dataclass(frozen=True)
class StartSpec:
    """A start position: `sequence` for SEQUENCE, `time` (epoch seconds) for TIME."""

    kind: Start = Start.DEFAULT
    sequence: int = 0
    time: float = 0.0


@dataclass(frozen=True)
class BusSettings:
    """Tunables of the bus core.

    Attributes:
        retention_max_age_s: Events older than this are deleted (0 keeps them forever).
        retention_max_count: At most this many events are kept (0 means no limit).
        retention_interval_s: How often retention runs.
        max_batch: Most events per PublishBatch.
        max_data_bytes: Largest serialized `data` of one event.
        max_group_events: Most events group-committed in one transaction.
        reader_queue_limit: Events buffered for one live reader before it falls back to
            reading the log (bounded memory per subscriber).
        reader_queue_bytes: The same bound in bytes of the events as stored.
        push_max_attempts: Default attempts per event before a dead letter.
        push_initial_backoff_s: First wait between attempts; doubles each time.
        push_max_backoff_s: Longest wait between attempts.
        push_timeout_s: Deadline of one DeliverEvent(s) call.
        push_batch: Most events handed to a domain in one DeliverEvents call when several
            are waiting for a subscription; 1 delivers one event per DeliverEvent call.
        flush_interval_s: How often subscription positions and counters are persisted.
    """

    retention_max_age_s: float = 7 * 86400.0
    retention_max_count: int = 1_000_000
    retention_interval_s: float = 5.0
    max_batch: int = DEFAULT_MAX_BATCH
    max_data_bytes: int = 1024 * 1024
    max_group_events: int = 20_000
    reader_queue_limit: int = 10_000
    reader_queue_bytes: int = DEFAULT_READER_QUEUE_BYTES
    push_max_attempts: int = 5
    push_initial_backoff_s: float = 0.5
    push_max_backoff_s: float = 30.0
    push_timeout_s: float = 10.0
    push_batch: int = 100
    flush_interval_s: float = 0.5


@dataclass
class SubscriptionState:
    """A push subscription and its delivery counters (mutable: the worker updates it)."""

    subscription_id: str
    domain_id: str
    patterns: tuple[str, ...]
    created_at: float
    max_attempts: int
    delivered_sequence: int
    delivered_count: int = 0
    redelivery_count: int = 0
    dead_letter_count: int = 0
    last_error: str = ""

    def same_spec(self, domain_id: str, patterns: tuple[str, ...], max_attempts: int) -> bool:
        """True when a create request asks for exactly this subscription."""
        return (domain_id, set(patterns), max_attempts) == (
            self.domain_id,
            set(self.patterns),
            self.max_attempts,
        )


@dataclass
class ConsumerState:
    """A durable Subscribe consumer."""

    name: str
    patterns: tuple[str, ...]
    source_domain: str
    acked_sequence: int
    updated_at: float = 0.0


@dataclass(frozen=True)
class DeadLetterRecord:
    """An event a push subscription gave up on. `event` is the serialized Event."""

    dead_letter_id: str
    subscription_id: str
    domain_id: str
    sequence: int
    event: bytes
    attempts: int
    reason: str
    failed_at: float
    redelivering: bool = False


@dataclass(frozen=True)
class Stats:
    """Counts for GetStats."""

    published_total: int
    duplicates_total: int
    streamed_total: int
    delivered_total: int
    head_sequence: int
    first_sequence: int
    events_by_type: dict[str, int]
    subscriptions: list[SubscriptionState]
    consumers: list[ConsumerState]
    dead_letters: int
    active_streams: int
    retained_events: int = field(default=0)
