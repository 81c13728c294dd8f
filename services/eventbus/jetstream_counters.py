"""Push delivery counters on JetStream: a key-value bucket that every bus instance adds to.

Each instance remembers the totals it last stored or read per key (its base) and adds
only what it counted since, with compare-and-set: two instances adding at once both get
their counts in, one of them after a retry.
"""

from __future__ import annotations

import contextlib
import json

from nats.js.errors import (
    BadRequestError,
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.errors import NotFoundError as JsNotFoundError
from nats.js.kv import KeyValue

from services.common.errors import Unavailable
from services.eventbus.jetstream import JetStreamLog


class CounterBucket:
    """Named sets of counts in one key-value bucket.

    Args:
        event_log: The JetStream log; its connection is shared.
        bucket: The bucket's name.
    """

    def __init__(self, event_log: JetStreamLog, bucket: str) -> None:
        self.log = event_log
        self.bucket = bucket
        self._kv: KeyValue | None = None
        self._based: dict[str, dict[str, int]] = {}

    @property
    def kv(self) -> KeyValue:
        if self._kv is None:
            raise Unavailable("event bus is not open")
        return self._kv

    async def open(self) -> None:
        """Binds to the bucket, creating it unless it exists."""
        js = self.log.js
        try:
            self._kv = await js.key_value(self.bucket)
        except (JsNotFoundError, BucketNotFoundError):
            self._kv = await js.create_key_value(
                bucket=self.bucket, history=1, replicas=self.log.options.replicas
            )

    def base(self, key: str) -> dict[str, int]:
        """The counts this instance last stored or read under `key`."""
        return self._based.get(key, {})

    async def load(self, key: str) -> dict[str, int]:
        """The counts stored under `key`, taken as this instance's base."""
        try:
            entry = await self.kv.get(key)
            counts = {k: int(v) for k, v in json.loads(entry.value or b"{}").items()}
        except KeyNotFoundError:
            counts = {}
        self._based[key] = counts
        return counts

    async def add(self, key: str, counts: dict[str, int]) -> dict[str, int]:
        """Adds what changed since this instance last added or read `key`; returns the
        stored totals (which include other instances' additions)."""
        base = self._based.get(key, {})
        delta = {k: v - base.get(k, 0) for k, v in counts.items()}
        while True:
            try:
                entry = await self.kv.get(key)
                stored = {k: int(v) for k, v in json.loads(entry.value or b"{}").items()}
                revision: int | None = entry.revision
            except KeyNotFoundError:
                stored, revision = {}, None
            total = {k: stored.get(k, 0) + delta.get(k, 0) for k in {*stored, *delta}}
            value = json.dumps(total).encode()
            try:
                if revision is None:
                    await self.kv.create(key, value)
                else:
                    await self.kv.update(key, value, last=revision)
            except (KeyWrongLastSequenceError, BadRequestError):
                continue  # another instance added meanwhile: add to its total
            self._based[key] = total
            return total

    async def delete(self, key: str) -> None:
        """Forgets `key`."""
        with contextlib.suppress(KeyNotFoundError):
            await self.kv.delete(key)
        self._based.pop(key, None)
