"""A domain for crash tests, run as its own process (`python -m tests.sdk.crash_domain`).

Its `hang` action notes each start in `<GRACE_DATA_DIR>/hang.starts` and then waits for
a minute, so a test can kill the process in the middle of it. `resume` (declared safe to
run again after an interruption) does the same on its first start only; `ping` answers at
once.
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


@domain.action("ping", rerun_if_interrupted=True)
async def ping(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
    return {"pong": True}


@domain.action("resume", rerun_if_interrupted=True)
async def resume(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
    path = Path(os.environ["GRACE_DATA_DIR"]) / "resume.starts"
    first = not path.exists()
    with path.open("a") as starts:
        starts.write(f"{ctx.idempotency_key}\n")
    if first:
        await asyncio.sleep(60)
    return {"starts": len(path.read_text().splitlines())}


if __name__ == "__main__":
    raise SystemExit(domain.run())
