"""SDK fixtures: a small domain whose functions count their calls, and its config."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from services.sdk import Context, Domain, DomainConfig, Drop, Event, InvalidArgument, Retry, field
from tests.support import server_config


class Probe:
    """What the test domain's functions did, for assertions."""

    def __init__(self) -> None:
        self.runs: dict[str, int] = {}
        self.release = asyncio.Event()
        self.release.set()
        self.fail_next = 0
        self.events: list[Event] = []
        self.contexts: list[Context] = []

    def count(self, name: str) -> int:
        self.runs[name] = self.runs.get(name, 0) + 1
        return self.runs[name]


def counting_domain(probe: Probe, domain_id: str = "test_domain") -> Domain:
    """A domain with `echo`, `slow` (waits for probe.release), `flaky` and handlers."""
    domain = Domain(domain_id, capabilities=["testing", "echo"], version="1.2.3")

    @domain.action("echo", description="Returns its input with a run number")
    async def echo(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
        probe.contexts.append(ctx)
        text = field(data, "text", str)
        return {"text": text, "run": probe.count("echo")}

    @domain.compensate("echo")
    async def unecho(ctx: Context, data: dict[str, Any], output: dict[str, Any]) -> dict[str, Any]:
        return {"undone_run": output["run"], "undo": probe.count("unecho")}

    @domain.action("slow")
    async def slow(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
        """Waits until the test releases it."""
        run = probe.count("slow")
        await probe.release.wait()
        return {"run": run}

    @domain.action("flaky")
    async def flaky(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
        run = probe.count("flaky")
        if probe.fail_next:
            probe.fail_next -= 1
            raise RuntimeError("flaky failed on purpose")
        if data.get("bad"):
            raise InvalidArgument("input.bad", "must be false")
        return {"run": run}

    @domain.on_event("ml.*")
    async def on_ml(ctx: Context, event: Event) -> None:
        probe.events.append(event)
        answer = event.data.get("answer")
        if answer == "retry":
            raise Retry("not now", after_s=2.5)
        if answer == "drop":
            raise Drop("never")
        if answer == "crash":
            raise RuntimeError("boom")

    return domain


def domain_config(tmp_path: Path, domain_id: str = "test_domain", **changes: Any) -> DomainConfig:
    """A config on a free port with no peers, fast heartbeats and short backoff."""
    config = DomainConfig(
        server=server_config(domain_id, tmp_path),
        heartbeat_interval_s=0.1,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
    )
    return dataclasses.replace(config, **changes)
