"""A domain written with the SDK whose latency a test can raise: `work` takes about 20 ms,
plus whatever `slow_down` set. The extra latency lives in memory, so a restart heals it."""

from __future__ import annotations

import asyncio
from typing import Any

from services.sdk import Context, Domain, field

domain = Domain("slow_domain", capabilities=["testing"], version="1.0.0", port=8299)
_extra_ms = 0.0


@domain.action("work", description="Takes about 20 ms, plus the injected latency")
async def work(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep((20.0 + _extra_ms) / 1000.0)
    return {"extra_ms": _extra_ms}


@domain.action("slow_down", description="Adds latency to every later `work` call")
async def slow_down(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
    global _extra_ms
    _extra_ms = field(data, "ms", float)
    return {"extra_ms": _extra_ms}


if __name__ == "__main__":
    raise SystemExit(domain.run())
