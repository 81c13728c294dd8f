"""What every `grace` command shares: options, where the services are, exit codes.

Where a service is, in order: `GRACE_<NAME>_ADDR`; else the addresses a running `grace up`
wrote into its data directory (`--data-dir`, `GRACE_DATA_DIR`, default `./.grace`); else
localhost and the service's default port. Calls go through `services.common.channels`,
the one place that sets up client channels.

Exit codes (the same for every command, so scripts can branch on them):

| code | meaning |
| ---- | ------- |
| 0 | done; the answer is positive (all SERVING, workflow SUCCEEDED, proof valid) |
| 1 | done, but the answer is negative (a component not SERVING, a failed workflow, a proof |
|   | or log that does not verify) |
| 2 | could not run: bad usage or configuration, or no server answers at the address |
| 3 | not found (a domain, execution, approval, component or running `grace up`) |
| 4 | refused by the server (invalid argument, failed precondition, already decided, permission) |
| 5 | the server failed (internal error) |
| 130 | interrupted (Ctrl-C) before an answer (for `watch`, `tail`, `-f`: the normal end, 0) |
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, TypeVar

import click
import grpc

from services.cli.credentials import client_security
from services.cli.output import FORMATS, Printer
from services.common.channels import ClientSecurity, channel
from services.common.config import DEFAULT_PORTS, env_prefix, peer_address

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# The file a running `grace up` keeps in its data directory: its pid and every address.
STATE_FILE = "grace-up.json"
DEFAULT_DATA_DIR = ".grace"
CALL_TIMEOUT_S = 15.0


class Exit(IntEnum):
    """The exit codes of every `grace` command (see the module docstring)."""

    OK = 0
    NOT_OK = 1
    UNAVAILABLE = 2
    NOT_FOUND = 3
    REJECTED = 4
    SERVER_ERROR = 5
    INTERRUPTED = 130


class Failure(click.ClickException):
    """A command ends with a message on stderr and one of the exit codes."""

    def __init__(self, message: str, code: Exit) -> None:
        super().__init__(message)
        self.code = code

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        """The process exit code."""
        return int(self.code)

    def show(self, file: Any = None) -> None:
        click.echo(f"grace: {self.format_message()}", err=True)


_REJECTED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
}


def rpc_failure(component: str, address: str, exc: grpc.aio.AioRpcError) -> Failure:
    """The failure a gRPC error means for the person who typed the command."""
    code = exc.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        who = "Guardian" if component == "guardian" else f"{component}"
        return Failure(f"no {who} answers on {address} (is `grace up` running?)", Exit.UNAVAILABLE)
    message = f"{code.name}: {exc.details()}"
    if code == grpc.StatusCode.NOT_FOUND:
        return Failure(message, Exit.NOT_FOUND)
    if code in _REJECTED:
        return Failure(message, Exit.REJECTED)
    return Failure(message, Exit.SERVER_ERROR)


def data_dir_of(value: str | None, env: Mapping[str, str] | None = None) -> Path:
    """The data directory: the flag, else GRACE_DATA_DIR, else ./.grace."""
    env = os.environ if env is None else env
    return Path(value or env.get("GRACE_DATA_DIR") or DEFAULT_DATA_DIR)


def read_state(data_dir: Path) -> dict[str, Any] | None:
    """What a `grace up` on this data directory wrote, or None when there is none."""
    try:
        state = json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


@dataclass
class Session:
    """The context of one command: how to print and where the services are.

    Attributes:
        printer: Prints the answer in the chosen format.
        data_dir: Where a local `grace up` keeps its data, logs and addresses.
        env: The environment addresses are read from.
    """

    printer: Printer
    data_dir: Path
    env: Mapping[str, str]

    def address(self, component: str) -> str:
        """`host:port` of a component: its variable, a running grace up's, or the default."""
        variable = f"{env_prefix(component)}ADDR"
        if self.env.get(variable):
            return self.env[variable]
        state = read_state(self.data_dir)
        if state and isinstance(state.get("addresses"), dict):
            found = state["addresses"].get(component)
            if isinstance(found, str) and found:
                return found
        if component in DEFAULT_PORTS:
            return peer_address(self.env, component)
        raise Failure(f"no address known for {component!r}: set {variable}", Exit.UNAVAILABLE)

    @functools.cached_property
    def security(self) -> ClientSecurity | None:
        """The credential grace up wrote in the data dir (None: an insecure Grace)."""
        return client_security(self.data_dir, self.env)

    def channel(self, target: str) -> grpc.aio.Channel:
        """A channel to `target` that authenticates with the data dir's credential. Only
        this command's channels use it: nothing process-wide changes (tests run commands
        in-process)."""
        return channel(target, security=self.security)

    def call(
        self,
        component: str,
        work: Callable[[grpc.aio.Channel], Awaitable[T]],
        *,
        address: str | None = None,
        waiting: str = "",
    ) -> T:
        """Runs `work` with a channel to `component`; gRPC errors become exit codes.

        `waiting` names what a slow call does: a spinner shows it on a terminal's stderr.
        """
        target = address or self.address(component)

        async def run() -> T:
            async with self.channel(target) as chan:
                if not (waiting and self.printer.err.is_terminal):
                    return await work(chan)
                with self.printer.err.status(waiting):
                    return await work(chan)

        try:
            return run_async(run())
        except grpc.aio.AioRpcError as exc:
            raise rpc_failure(component, target, exc) from None


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine to its end; Ctrl-C before an answer exits 130."""
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        raise Failure("interrupted", Exit.INTERRUPTED) from None


def session() -> Session:
    """The session of the running command (made by the options of `common_options`)."""
    ctx = click.get_current_context()
    found = ctx.find_object(Session)
    if found is None:
        found = _make_session(ctx)
    return found


def _make_session(ctx: click.Context) -> Session:
    format_value = _lookup(ctx, "output")
    data_dir_value = _lookup(ctx, "data_dir")
    made = Session(
        printer=Printer.create(format_value),
        data_dir=data_dir_of(data_dir_value),
        env=os.environ,
    )
    ctx.obj = made
    return made


def _lookup(ctx: click.Context, key: str) -> str | None:
    """The nearest value of an option stored by `common_options`, from this command up."""
    current: click.Context | None = ctx
    while current is not None:
        value = current.meta.get(f"grace.{key}")
        if value:
            return str(value)
        current = current.parent
    return None


def _remember(key: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        if value:
            ctx.meta[f"grace.{key}"] = value
        return value

    return callback


def output_option(function: F) -> F:
    """`-o/--output table|json|yaml` (default: table on a terminal, JSON when piped)."""
    return click.option(
        "-o",
        "--output",
        type=click.Choice(FORMATS),
        default=None,
        expose_value=False,
        is_eager=True,
        callback=_remember("output"),
        help="Output format (default: table on a terminal, JSON when piped).",
    )(function)


def data_dir_option(function: F) -> F:
    """`--data-dir`: where a local `grace up` keeps its data (GRACE_DATA_DIR, ./.grace)."""
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        default=None,
        expose_value=False,
        is_eager=True,
        callback=_remember("data_dir"),
        help="Data directory of the local `grace up` (GRACE_DATA_DIR; default ./.grace).",
    )(function)


def common_options(function: F) -> F:
    """The options every data command takes: `-o` and `--data-dir`."""
    return output_option(data_dir_option(function))


def parse_json_object(text: str, what: str) -> dict[str, Any]:
    """A JSON object from the command line: inline JSON, or `@FILE` (`@-` for stdin)."""
    if text.startswith("@"):
        name = text[1:]
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text()
        except OSError as exc:
            raise click.BadParameter(
                f"cannot read {name}: {exc.strerror}", param_hint=what
            ) from None
    try:
        value = json.loads(text) if text.strip() else {}
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=what) from None
    if not isinstance(value, dict):
        raise click.BadParameter("must be a JSON object ({...})", param_hint=what)
    return value
