"""What the bus accepts: the limits on an event's fields, and subscription patterns."""

from __future__ import annotations

import re
from collections.abc import Sequence

from grace.eventbus.v1 import event_pb2
from services.common.errors import InvalidArgument
from services.common.patterns import EVENT_TYPE_PATTERN, validate_pattern
from services.common.validation import require_id, require_text
from services.eventbus.model import MAX_PATTERNS, BusSettings

EVENT_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:\-]+")
MAX_EVENT_ID = 128
MAX_EVENT_TYPE = 256
MAX_SUBJECT = 256
MAX_TRACEPARENT = 128
MAX_TRACESTATE = 512
MAX_SIGNATURE = 512
# A batch signature's inclusion path: one SHA-256 per tree level (batch sizes are uint32).
MAX_INCLUSION_PATH = 32
HASH_BYTES = 32
MAX_STREAM_BATCH = 1000
DEFAULT_STREAM_BATCH = 500


class EventValidator:
    """Checks events' fields; raises InvalidArgument naming the first bad one.

    Event types and sources repeat across millions of events, so the ones already found
    valid are remembered (a bounded set) and the full checks run once per distinct value.

    Args:
        settings: Size limits.
    """

    def __init__(self, settings: BusSettings) -> None:
        self.settings = settings
        self._types: set[str] = set()
        self._sources: set[str] = set()

    def __call__(self, event: event_pb2.Event, prefix: str = "") -> None:
        event_id = event.id
        if event_id and (len(event_id) > MAX_EVENT_ID or not EVENT_ID_PATTERN.fullmatch(event_id)):
            require_id(f"{prefix}id", event_id, max_length=MAX_EVENT_ID, pattern=EVENT_ID_PATTERN)
        event_type = event.event_type
        if event_type not in self._types:
            require_id(
                f"{prefix}event_type",
                event_type,
                max_length=MAX_EVENT_TYPE,
                pattern=EVENT_TYPE_PATTERN,
            )
            self._remember(self._types, event_type)
        source = event.source_domain
        if source not in self._sources:
            require_id(f"{prefix}source_domain", source)
            self._remember(self._sources, source)
        if event.subject or event.traceparent or event.tracestate or event.signature_key_id:
            require_text(f"{prefix}subject", event.subject, max_length=MAX_SUBJECT)
            require_text(f"{prefix}traceparent", event.traceparent, max_length=MAX_TRACEPARENT)
            require_text(f"{prefix}tracestate", event.tracestate, max_length=MAX_TRACESTATE)
            require_text(
                f"{prefix}signature_key_id", event.signature_key_id, max_length=MAX_EVENT_ID
            )
        if len(event.signature) > MAX_SIGNATURE:
            raise InvalidArgument(f"{prefix}signature", f"must be at most {MAX_SIGNATURE} bytes")
        path = event.signature_inclusion_path
        if path and (len(path) > MAX_INCLUSION_PATH or any(len(p) != HASH_BYTES for p in path)):
            # Bounds what a batch signature's metadata may store; whether the path is right
            # is the verifier's question.
            raise InvalidArgument(
                f"{prefix}signature_inclusion_path",
                f"must have at most {MAX_INCLUSION_PATH} hashes of {HASH_BYTES} bytes",
            )
        size = event.data.ByteSize()
        if size > self.settings.max_data_bytes:
            raise InvalidArgument(
                f"{prefix}data", f"is {size} bytes; the limit is {self.settings.max_data_bytes}"
            )

    def batch(self, events: Sequence[event_pb2.Event]) -> dict[int, str]:
        """Checks a batch's events (as `__call__` would, fields named `events[i].`);
        returns the message of each invalid one by index (empty when all are valid).

        One pass with every check inlined, as bounds that an event within the limits
        passes: a call, a field prefix and a `data` wrapper per event cost about as much as
        the checks themselves. An event the pass does not clear (a first-seen type or
        source, or anything out of bounds) goes through `__call__`, which names the field.
        The whole event's size bounds its `data`'s: only a larger event measures `data`.
        """
        errors: dict[int, str] = {}
        types, sources = self._types, self._sources
        id_matches = EVENT_ID_PATTERN.fullmatch
        max_size = self.settings.max_data_bytes
        for index, event in enumerate(events):
            event_id = event.id
            path = event.signature_inclusion_path
            if (
                (event_id and (len(event_id) > MAX_EVENT_ID or id_matches(event_id) is None))
                or event.event_type not in types
                or event.source_domain not in sources
                or len(event.subject) > MAX_SUBJECT
                or len(event.traceparent) > MAX_TRACEPARENT
                or len(event.tracestate) > MAX_TRACESTATE
                or len(event.signature_key_id) > MAX_EVENT_ID
                or len(event.signature) > MAX_SIGNATURE
                or (
                    path
                    and (len(path) > MAX_INCLUSION_PATH or any(len(p) != HASH_BYTES for p in path))
                )
                or event.ByteSize() > max_size
            ):
                try:
                    self(event, f"events[{index}].")
                except InvalidArgument as exc:
                    errors[index] = exc.message
        return errors

    @staticmethod
    def _remember(seen: set[str], value: str) -> None:
        if len(seen) >= 100_000:
            seen.clear()
        seen.add(value)


def validate_patterns(single: str, many: Sequence[str], *, required: bool) -> tuple[str, ...]:
    """`pattern` plus `patterns`, each valid, duplicates dropped; `*` when none and allowed."""
    patterns: list[str] = []
    if single:
        patterns.append(validate_pattern(single, field="pattern"))
    for index, pattern in enumerate(many):
        patterns.append(validate_pattern(pattern, field=f"patterns[{index}]"))
    unique = tuple(dict.fromkeys(patterns))
    if not unique:
        if required:
            raise InvalidArgument("pattern", "is required (or give patterns)")
        return ("*",)
    if len(unique) > MAX_PATTERNS:
        raise InvalidArgument("patterns", f"must have at most {MAX_PATTERNS} entries")
    return ("*",) if "*" in unique else unique
