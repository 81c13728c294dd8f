"""Dead letters on JetStream: the stream `<stream>_DEAD`, one message per dead letter on
`<prefix>_dead.<subscription>`, the event as payload and the record as a JSON header.

A record changed by a redelivery is published again and its old message deleted; listing
reads the dead letters (of one subscription, or all) and sorts them: dead letters are
meant to be few, and cleared.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncGenerator
from dataclasses import asdict

import nats
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError
from nats.js.errors import NotFoundError as JsNotFoundError

from services.eventbus.jetstream import JetStreamLog, subject_for
from services.eventbus.model import DeadLetterRecord

log = logging.getLogger(__name__)

DEAD_LETTER = "Grace-Dead-Letter"
_FETCH = 256


class DeadLetterStream:
    """The dead letters of every push subscription of one event stream.

    Args:
        event_log: The JetStream log; its connection and names are shared.
    """

    def __init__(self, event_log: JetStreamLog) -> None:
        self.log = event_log
        self.stream = f"{event_log.options.stream}_DEAD"
        self.prefix = f"{event_log.options.subject_prefix}_dead"

    @property
    def js(self) -> JetStreamContext:
        return self.log.js

    async def open(self) -> None:
        """Creates the stream unless it exists."""
        config = StreamConfig(
            name=self.stream,
            subjects=[f"{self.prefix}.>"],
            storage=StorageType.FILE,
            num_replicas=self.log.options.replicas,
        )
        try:
            await self.js.stream_info(self.stream)
        except JsNotFoundError:
            with contextlib.suppress(BadRequestError):  # another instance made it
                await self.js.add_stream(config)

    async def _records(
        self, subscription_id: str = ""
    ) -> AsyncGenerator[tuple[int, DeadLetterRecord]]:
        subject = (
            subject_for(self.prefix, subscription_id) if subscription_id else f"{self.prefix}.>"
        )
        sub = await self.js.pull_subscribe(
            subject,
            stream=self.stream,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=60.0,
                mem_storage=True,
            ),
        )
        try:
            pending = (await sub.consumer_info()).num_pending or 0
            while pending > 0:
                try:
                    batch = await sub.fetch(
                        min(pending, _FETCH), timeout=self.log.options.timeout_s
                    )
                except (TimeoutError, nats.errors.TimeoutError):
                    return
                for msg in batch:
                    pending -= 1
                    record = _dead_letter(msg)
                    if record is not None and (
                        not subscription_id or record.subscription_id == subscription_id
                    ):
                        yield msg.metadata.sequence.stream, record
        finally:
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()

    async def _find(self, dead_letter_id: str) -> tuple[int, DeadLetterRecord] | None:
        async with contextlib.aclosing(self._records()) as records:
            async for seq, record in records:
                if record.dead_letter_id == dead_letter_id:
                    return seq, record
        return None

    async def add(self, record: DeadLetterRecord) -> None:
        """Stores a dead letter, or replaces it (same id) after a failed redelivery."""
        meta = {k: v for k, v in asdict(record).items() if k != "event"}
        old = await self._find(record.dead_letter_id)
        await self.js.publish(
            subject_for(self.prefix, record.subscription_id),
            record.event,
            stream=self.stream,
            headers={DEAD_LETTER: json.dumps(meta)},
        )
        if old is not None:
            with contextlib.suppress(JsNotFoundError):
                await self.js.delete_msg(self.stream, old[0])

    async def get(self, dead_letter_id: str) -> DeadLetterRecord | None:
        """One dead letter, or None."""
        found = await self._find(dead_letter_id)
        return None if found is None else found[1]

    async def list(
        self,
        *,
        subscription_id: str = "",
        before: tuple[float, str] | None = None,
        limit: int = 50,
        redelivering: bool | None = None,
    ) -> list[DeadLetterRecord]:
        """Dead letters newest first, after the keyset position `before`."""
        records = []
        async with contextlib.aclosing(self._records(subscription_id)) as found:
            async for _, record in found:
                if redelivering is not None and record.redelivering != redelivering:
                    continue
                if before is not None and (record.failed_at, record.dead_letter_id) >= before:
                    continue
                records.append(record)
        records.sort(key=lambda r: (r.failed_at, r.dead_letter_id), reverse=True)
        return records[:limit]

    async def count(self) -> int:
        """How many dead letters are held."""
        return int((await self.js.stream_info(self.stream)).state.messages)

    async def remove(self, dead_letter_id: str) -> None:
        """Deletes a dead letter (it was redelivered)."""
        found = await self._find(dead_letter_id)
        if found is not None:
            with contextlib.suppress(JsNotFoundError):
                await self.js.delete_msg(self.stream, found[0])


def _dead_letter(msg: Msg) -> DeadLetterRecord | None:
    try:
        meta = json.loads((msg.headers or {}).get(DEAD_LETTER, ""))
        return DeadLetterRecord(event=msg.data, **meta)
    except (TypeError, ValueError):
        log.warning("dead-letter message %d is not a record", msg.metadata.sequence.stream)
        return None
