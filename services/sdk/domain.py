"""`Domain`: declare a domain's actions, compensations and event handlers, then serve it.

domain = Domain("ai_domain", capabilities=["ml", "analysis"], version="1.0.0", port=8202)

@domain.action("analyze", description="Keywords, summary and sentiment of a text")
async def analyze(ctx: Context, data: dict) -> dict:
    return {"words": len(data["text"].split())}

@domain.compensate("analyze")
async def forget(ctx: Context, data: dict, output: dict) -> dict:
    return {"forgotten": True}

@domain.on_event("ml.*")
async def learn(ctx: Context, event: Event) -> None:
    ctx.log.info("saw %s", event.event_type)

@domain.on_insight(capability="storage", kind="latency")
async def adjust(ctx: Context, insight: Insight) -> None:
    await ctx.memory.apply(insight.contribution_id, success=True, detail="cache enabled")

if __name__ == "__main__":
    raise SystemExit(domain.run())
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

from services.common import telemetry
from services.common.config import ConfigError
from services.common.data_dir import secure_data_dir
from services.common.errors import InvalidArgument
from services.common.patterns import matches, validate_pattern
from services.common.server import GraceServer
from services.common.validation import ID_PATTERN, MAX_ID_LENGTH
from services.sdk.config import DomainConfig, parse_flags
from services.sdk.context import Context, Event, Outcome
from services.sdk.insights import EVENT_PREFIX as INSIGHT_PREFIX
from services.sdk.insights import KINDS as INSIGHT_KINDS
from services.sdk.insights import InsightFunction, insight_handler
from services.sdk.join import JoinSettings, join_if_due, renew_forever

log = logging.getLogger(__name__)

ActionFunction: TypeAlias = Callable[[Context, dict[str, Any]], Awaitable[Mapping[str, Any] | None]]
CompensationFunction: TypeAlias = Callable[
    [Context, dict[str, Any], dict[str, Any]], Awaitable[Mapping[str, Any] | None]
]
HandlerFunction: TypeAlias = Callable[[Context, Event], Awaitable[Outcome | None]]
_A = TypeVar("_A", bound=ActionFunction)
_C = TypeVar("_C", bound=CompensationFunction)
_H = TypeVar("_H", bound=HandlerFunction)
_I = TypeVar("_I", bound=InsightFunction)


@dataclass
class ActionSpec:
    """A declared action.

    Attributes:
        name: Action name.
        description: What it does (DescribeDomain shows it).
        function: `async def f(ctx, data) -> dict`.
        compensation: `async def g(ctx, data, output) -> dict | None`, or None.
        rerun_if_interrupted: Running the action again after a run of the same key was
            interrupted (the domain stopped mid-run) is safe: its effects are keyed on
            `ctx.idempotency_key`, or it has none.
    """

    name: str
    description: str
    function: ActionFunction
    compensation: CompensationFunction | None = None
    rerun_if_interrupted: bool = False


@dataclass(frozen=True)
class HandlerSpec:
    """A declared event handler: `async def h(ctx, event) -> None | Outcome`."""

    pattern: str
    name: str
    function: HandlerFunction


@dataclass
class Domain:
    """A Grace domain: what it can do, and how to serve it.

    Args:
        domain_id: Id in the registry: 1-128 letters, digits, '_', '-', '.', starting with
            a letter or digit. Also names its env variables (`GRACE_<ID>_PORT`) and its
            database file.
        capabilities: What it offers, for capability routing ("ml", "storage").
        version: Software version, registered and described.
        description: One line about the domain, registered as metadata.
        port: Default port (env `GRACE_<ID>_PORT` and `--port` override it).
        metadata: Extra registry metadata.
    """

    domain_id: str
    capabilities: Sequence[str] = ()
    version: str = "0.1.0"
    description: str = ""
    port: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)
    actions: dict[str, ActionSpec] = field(default_factory=dict, init=False)
    handlers: list[HandlerSpec] = field(default_factory=list, init=False)
    _pending_compensations: dict[str, CompensationFunction] = field(
        default_factory=dict, init=False, repr=False
    )

    def __post_init__(self) -> None:
        _check_name("domain_id", self.domain_id)
        self.capabilities = tuple(self.capabilities)
        for capability in self.capabilities:
            _check_name("capability", capability)

    def action(
        self, name: str | None = None, *, description: str = "", rerun_if_interrupted: bool = False
    ) -> Callable[[_A], _A]:
        """Declares an action: `@domain.action("analyze", description=...)`.

        The function is `async def f(ctx: Context, data: dict) -> dict`; it may raise the
        SDK's errors (`InvalidArgument("text", "is required")`...) to fail with a status.
        Stacking two `action` decorators declares two names for one function.

        Args:
            name: Action name; defaults to the function's name.
            description: What the action does; defaults to the docstring's first line.
            rerun_if_interrupted: Declares that running the action again, after the domain
                stopped in the middle of a run with the same idempotency key, is safe (its
                effects are keyed on `ctx.idempotency_key`, or it has none). Without it,
                such a key answers IDEMPOTENCY_KEY_INTERRUPTED instead (at most once).
        """

        def declare(function: _A) -> _A:
            _require_coroutine(function, "action")
            action = name or function.__name__
            _check_name("action", action)
            if action in self.actions:
                raise ValueError(f"{self.domain_id}: action {action!r} is declared twice")
            doc = (inspect.getdoc(function) or "").split("\n", 1)[0]
            spec = ActionSpec(
                action, description or doc, function, rerun_if_interrupted=rerun_if_interrupted
            )
            spec.compensation = self._pending_compensations.pop(action, None)
            self.actions[action] = spec
            return function

        return declare

    def compensate(self, action: str) -> Callable[[_C], _C]:
        """Declares how to undo an action: `@domain.compensate("ingest")`.

        The function is `async def g(ctx: Context, data: dict, output: dict) -> dict | None`
        and gets the input the action ran with and the output it returned. It should be
        idempotent in effect (undoing twice is harmless); the SDK already replays the
        first result of a repeated idempotency key.
        """

        def declare(function: _C) -> _C:
            _require_coroutine(function, "compensation")
            spec = self.actions.get(action)
            already = spec.compensation if spec else self._pending_compensations.get(action)
            if already is not None:
                raise ValueError(f"{self.domain_id}: action {action!r} has two compensations")
            if spec is None:
                self._pending_compensations[action] = function
            else:
                spec.compensation = function
            return function

        return declare

    def on_event(self, pattern: str) -> Callable[[_H], _H]:
        """Declares an event handler: `@domain.on_event("ml.*")`.

        The domain subscribes to `pattern` on the bus when it starts (`*` matches any run
        of characters, dots included). The handler is `async def h(ctx, event) -> None`:
        returning normally acknowledges the event; raising `Retry` (or returning
        `Outcome.RETRY`) has the bus deliver it again later; raising `Drop` (or returning
        `Outcome.DROP`) dead-letters it. Any other exception counts as RETRY. Delivery is
        at least once: handlers should tolerate a repeat (`event.id` identifies it).
        """
        try:
            validate_pattern(pattern)
        except InvalidArgument as exc:
            raise ValueError(f"{self.domain_id}: event pattern {pattern!r}: {exc.rule}") from None

        def declare(function: _H) -> _H:
            _require_coroutine(function, "event handler")
            self.handlers.append(HandlerSpec(pattern, function.__name__, function))
            return function

        return declare

    def on_insight(
        self,
        *,
        capability: str | None = None,
        action: str | None = None,
        kind: str | None = None,
    ) -> Callable[[_I], _I]:
        """Declares a handler of the learning kernel's insights:
        `@domain.on_insight(capability="ml", action="generate", kind="failure")`.

        The handler is `async def h(ctx, insight: Insight) -> None`; it runs for the
        `insight.*` events about an action of a domain with `capability`, named `action`,
        of `kind` (failure, latency, degradation, retries; each filter None for any), and
        reports what applying it did with `ctx.memory.apply(insight.contribution_id,
        success=...)`. Outcomes are as for `on_event`.
        """
        if kind is not None and kind not in INSIGHT_KINDS:
            raise ValueError(
                f"{self.domain_id}: insight kind {kind!r}: must be one of {INSIGHT_KINDS}"
            )
        pattern = f"{INSIGHT_PREFIX}{kind or '*'}"

        def declare(function: _I) -> _I:
            _require_coroutine(function, "insight handler")
            handler = insight_handler(function, capability, action, kind)
            self.handlers.append(HandlerSpec(pattern, function.__name__, handler))
            return function

        return declare

    @property
    def event_patterns(self) -> list[str]:
        """The distinct patterns of the declared handlers, in declaration order."""
        return list(dict.fromkeys(h.pattern for h in self.handlers))

    def handlers_for(self, event_type: str, pattern: str | None = None) -> list[HandlerSpec]:
        """The handlers of `pattern` (when given and declared), else every handler whose
        pattern matches `event_type`."""
        if pattern is not None and pattern in self.event_patterns:
            return [h for h in self.handlers if h.pattern == pattern]
        return [h for h in self.handlers if matches(h.pattern, event_type)]

    def check(self) -> None:
        """Raises ValueError when a compensation names an undeclared action."""
        if self._pending_compensations:
            names = ", ".join(sorted(self._pending_compensations))
            raise ValueError(f"{self.domain_id}: compensation for undeclared action(s): {names}")

    def config(
        self, env: Mapping[str, str] | None = None, flags: argparse.Namespace | None = None
    ) -> DomainConfig:
        """The domain's config from `env` (default os.environ) and parsed flags."""
        return DomainConfig.from_env(self.domain_id, self.port, env, flags)

    @asynccontextmanager
    async def serve(
        self, config: DomainConfig, *, schema: str | None = None
    ) -> AsyncIterator[RunningDomain]:
        """Serves the domain until the block exits (for tests and embedding).

            async with domain.serve(config) as running:
                ... call running.address ...

        Args:
            config: Where to listen, store and find peers (`domain.config()` or built).
            schema: PostgreSQL schema for the domain's tables (tests).
        """
        from services.sdk.server import DomainServer

        self.check()
        service = DomainServer(self, config, schema=schema)
        server = GraceServer(config.server, service)
        service.attach(server)
        async with server:
            yield RunningDomain(self, service, server)

    def run(self, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
        """Serves until SIGTERM/SIGINT; the body of a domain's `__main__`. Returns the exit
        status (2 on a configuration error)."""
        from services.sdk.server import DomainServer

        telemetry.configure_logging()
        try:
            self.check()
            config = self.config(env, parse_flags(self.domain_id, argv))
        except (ConfigError, ValueError) as exc:
            log.error("%s: configuration error: %s", self.domain_id, exc)
            return 2
        secure_data_dir(config.server.data_dir)
        telemetry.configure_tracing(self.domain_id, config.server.env)

        async def serve() -> None:
            # With GRACE_JOIN_TOKEN, get (or renew) the domain's certificate first.
            joining = JoinSettings.from_env(
                config.server.security, config.server.env, config.key_path
            )
            await join_if_due(joining)
            renewal = asyncio.create_task(renew_forever(joining)) if joining else None
            service = DomainServer(self, config)
            server = GraceServer(config.server, service)
            service.attach(server)
            try:
                await server.serve_forever()
            finally:
                if renewal is not None:
                    renewal.cancel()

        asyncio.run(serve())
        return 0


@dataclass(frozen=True)
class RunningDomain:
    """A domain being served (from `Domain.serve`).

    Attributes:
        domain: The declarations.
        service: The server-side state: dispatcher, registrar, subscriptions.
        server: The gRPC server.
    """

    domain: Domain
    service: Any
    server: GraceServer

    @property
    def address(self) -> str:
        """`host:port` to dial."""
        return self.server.address

    @property
    def port(self) -> int:
        """The bound port."""
        return self.server.port


def _check_name(what: str, value: str) -> None:
    if not value or len(value) > MAX_ID_LENGTH or not ID_PATTERN.fullmatch(value):
        raise ValueError(
            f"{what} {value!r}: must be 1-{MAX_ID_LENGTH} letters, digits, '_', '-', '.', "
            "starting with a letter or digit"
        )


def _require_coroutine(function: Callable[..., Any], what: str) -> None:
    if not inspect.iscoroutinefunction(function):
        raise TypeError(f"{what} {getattr(function, '__name__', function)!r} must be async def")
