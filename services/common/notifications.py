"""PostgreSQL LISTEN on a connection of its own, kept open across failures.

A notification is a hint, never the data: PostgreSQL drops the ones sent while a listener
was disconnected, so whoever listens must read what changed from its tables after every
(re)connection (`on_connect`) and now and then anyway, on a timer of its own. With that, a missed
notification only delays a change; it never loses one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from services.common.backoff import Backoff
from services.common.storage import Database

log = logging.getLogger(__name__)

RECONNECT = Backoff(0.2, max_s=5.0, jitter=0.2)

Notify = Callable[[str, str], None]
OnConnect = Callable[[Any], Awaitable[None]]


class Listener:
    """Listens to some channels and reconnects with backoff when the connection fails.

    Args:
        db: A PostgreSQL database.
        channels: The channels to LISTEN to.
        notify: Called with (channel, payload) for each notification, on the event loop.
        on_connect: Awaited with the driver connection after each (re)connection, once the
            channels are listened to: catch up there, take session locks there.
        keepalive_s: How often the connection is checked (a dead peer sends nothing).
        backoff: Waits between reconnection attempts.
    """

    def __init__(
        self,
        db: Database,
        channels: Sequence[str],
        notify: Notify,
        on_connect: OnConnect,
        *,
        keepalive_s: float = 2.0,
        backoff: Backoff = RECONNECT,
    ) -> None:
        self._db = db
        self._channels = tuple(channels)
        self._notify = notify
        self._on_connect = on_connect
        self._keepalive_s = keepalive_s
        self._backoff = backoff
        self.connected = asyncio.Event()
        self.connections = 0

    def _deliver(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        try:
            self._notify(channel, payload)
        except Exception:
            log.exception("notification handler failed on %s", channel)

    async def run(self) -> None:
        """Listens until cancelled."""
        failures = 0
        while True:
            try:
                async with self._db.dedicated_connection() as conn:
                    for channel in self._channels:
                        await conn.add_listener(channel, self._deliver)
                    await self._on_connect(conn)
                    self.connections += 1
                    self.connected.set()
                    if failures:
                        log.info("listening to %s again", ", ".join(self._channels))
                    failures = 0
                    while True:
                        await asyncio.sleep(self._keepalive_s)
                        await conn.execute("SELECT 1")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.connected.clear()
                failures += 1
                if failures == 1:
                    log.warning("listening to %s failed (%s); reconnecting", self._channels, exc)
                await asyncio.sleep(self._backoff.delay(failures))
