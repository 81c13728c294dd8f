"""Event-type patterns, with the seeds' semantics.

`*` matches any run of characters, dots included, and every other character is literal:
`ml.*` matches `ml.prediction` and `ml.model.trained` (not `ml` itself), `*` matches every
event type, and `*.failed` matches `squad.task.failed`. One definition for the bus, the SDK
and anything else that filters events.
"""

from __future__ import annotations

import functools
import re

from services.common.errors import InvalidArgument

MAX_PATTERN_LENGTH = 256
# Event types and patterns share an alphabet; patterns add '*'.
EVENT_TYPE_PATTERN = re.compile(r"[A-Za-z0-9_.:\-]+")
_PATTERN_ALPHABET = re.compile(r"[A-Za-z0-9_.:\-*]+")


def validate_pattern(pattern: str, *, field: str = "pattern") -> str:
    """A pattern within the length and alphabet limits, or InvalidArgument naming `field`."""
    if not pattern:
        raise InvalidArgument(field, "is required")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise InvalidArgument(field, f"must be at most {MAX_PATTERN_LENGTH} characters")
    if not _PATTERN_ALPHABET.fullmatch(pattern):
        raise InvalidArgument(field, "may contain only letters, digits, '_', '-', '.', ':' and '*'")
    return pattern


@functools.lru_cache(maxsize=4096)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The regular expression equivalent to a pattern (cached)."""
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def matches(pattern: str, event_type: str) -> bool:
    """True when `event_type` matches `pattern`."""
    if pattern == "*":
        return True
    if "*" not in pattern:
        return pattern == event_type
    return compile_pattern(pattern).fullmatch(event_type) is not None


def literal_prefix(pattern: str) -> str:
    """The characters before the first `*` (the whole pattern when there is none); an index
    keyed by it finds candidate patterns without testing every one."""
    return pattern.split("*", 1)[0]
