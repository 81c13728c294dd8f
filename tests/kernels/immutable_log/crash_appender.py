"""A log process for the kill -9 test: appends batches of entries to the log at a SQLite
path or database URL, forever, printing `acked <tree size>` after each acknowledged append.

    python -m tests.kernels.immutable_log.crash_appender <database url> <key file>
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

from grace.kernels.immutable_log.v1 import immutable_log_pb2 as pb
from services.common.signing import load_key
from services.common.storage import Database
from services.kernels.immutable_log.log import ImmutableLog, LogSettings
from services.kernels.immutable_log.store import LogStore


async def main(url: str, key_file: Path) -> None:
    log = ImmutableLog(
        LogStore(Database(url)),
        load_key(key_file),
        LogSettings(origin="test.example/log"),
    )
    await log.open()
    rng = random.Random()
    n = 0

    async def appender() -> None:
        nonlocal n
        while True:
            batch = []
            for _ in range(rng.randint(1, 40)):
                entry = pb.EntryData(kind="crash.test", actor="tester")
                entry.data.update({"n": n})
                n += 1
                batch.append(entry)
            result = await log.append(batch)
            print("acked", result.first_index + len(batch), flush=True)

    # Concurrent appenders, so the kill lands in group commits of several appends.
    await asyncio.gather(*(appender() for _ in range(4)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2])))
