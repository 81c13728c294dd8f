"""A domain for crash tests, run as its own process (`python -m tests.sdk.crash_domain`).

Its `hang` action notes each start in `<GRACE_DATA_DIR>/hang.starts` and then waits for
a minute, so a test can kill the process in the middle of it.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from services.sdk import Context, Domain

domain = Domain("crash_domain")


@domain.action("hang")
async def hang(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
    with (Path(os.environ["GRACE_DATA_DIR"]) / "hang.starts").open("a") as starts:
        starts.write(f"{ctx.idempotency_key}\n")
    await asyncio.sleep(60)
    return {"hung": True}


if __name__ == "__main__":
    raise SystemExit(domain.run())
