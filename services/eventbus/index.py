"""Which subscribers want an event: patterns indexed by their literal prefix.

A pattern without `*` is an exact key. A pattern with `*` is filed under its literal
prefix (the characters before the first `*`). Looking up an event type probes the prefixes
of the type that some pattern actually uses, so the cost grows with the length of the type
and the number of distinct prefix lengths, not with the number of subscriptions. Event
types repeat, so answers are cached until the index changes.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

from services.common.patterns import literal_prefix, matches

K = TypeVar("K", bound=Hashable)

_CACHE_LIMIT = 65_536


class PatternIndex(Generic[K]):
    """Maps event types to the keys (subscribers) whose patterns match them."""

    def __init__(self) -> None:
        self._exact: dict[str, set[K]] = {}
        # literal prefix -> pattern -> keys
        self._wild: dict[str, dict[str, set[K]]] = {}
        self._lengths: dict[int, int] = {}  # prefix length -> patterns using it
        self._patterns: dict[K, tuple[str, ...]] = {}
        self._cache: dict[str, frozenset[K]] = {}

    def __len__(self) -> int:
        return len(self._patterns)

    def __contains__(self, key: object) -> bool:
        return key in self._patterns

    def add(self, key: K, patterns: Iterable[str]) -> None:
        """Files `key` under each pattern (replacing any patterns it had)."""
        self.remove(key)
        unique = tuple(dict.fromkeys(patterns))
        self._patterns[key] = unique
        for pattern in unique:
            if "*" not in pattern:
                self._exact.setdefault(pattern, set()).add(key)
                continue
            prefix = literal_prefix(pattern)
            group = self._wild.setdefault(prefix, {})
            if pattern not in group:
                self._lengths[len(prefix)] = self._lengths.get(len(prefix), 0) + 1
            group.setdefault(pattern, set()).add(key)
        self._cache.clear()

    def remove(self, key: K) -> None:
        """Forgets `key`; unknown keys are ignored."""
        patterns = self._patterns.pop(key, None)
        if patterns is None:
            return
        for pattern in patterns:
            if "*" not in pattern:
                holders = self._exact[pattern]
                holders.discard(key)
                if not holders:
                    del self._exact[pattern]
                continue
            prefix = literal_prefix(pattern)
            group = self._wild[prefix]
            holders = group[pattern]
            holders.discard(key)
            if not holders:
                del group[pattern]
                self._lengths[len(prefix)] -= 1
                if not self._lengths[len(prefix)]:
                    del self._lengths[len(prefix)]
                if not group:
                    del self._wild[prefix]
        self._cache.clear()

    def lookup(self, event_type: str) -> frozenset[K]:
        """Every key with a pattern matching `event_type`."""
        cached = self._cache.get(event_type)
        if cached is not None:
            return cached
        found: set[K] = set(self._exact.get(event_type, ()))
        size = len(event_type)
        for length in self._lengths:
            if length > size:
                continue
            group = self._wild.get(event_type[:length])
            if not group:
                continue
            for pattern, keys in group.items():
                # "prefix*" matches whatever starts with the prefix; anything longer needs
                # the full matcher.
                if len(pattern) == length + 1 or matches(pattern, event_type):
                    found |= keys
        answer = frozenset(found)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[event_type] = answer
        return answer
