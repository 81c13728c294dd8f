"""The `grace` command, built with Click.

Each module of this package adds its commands to the root group with `register(cli)`;
adding a command group from another module is that module's `register` and one line in
`COMMANDS`. Exit codes and output formats are the same for every command: see
`services.cli.session` and `services.cli.output`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import click

from services.cli import (
    completion,
    control,
    domains,
    events,
    governance,
    immutable_log,
    memory,
    tasks,
    token,
    up,
    verify,
    workflows,
)

# Each entry adds one or more commands (or command groups) to the `grace` group.
COMMANDS: tuple[Callable[[click.Group], None], ...] = (
    up.register,
    control.register,
    domains.register,
    events.register,
    workflows.register,
    memory.register,
    governance.register,
    immutable_log.register,
    verify.register,
    completion.register,
    tasks.register,
    token.register,
)


@click.group(
    name="grace",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="grace", prog_name="grace")
def cli() -> None:
    """Run and operate a Grace system.

    Commands that answer with data take -o table|json|yaml (a table on a terminal, JSON
    when piped). Exit codes: 0 ok, 1 a negative answer, 2 bad usage or no server answers,
    3 not found, 4 refused by the server, 5 server error, 130 interrupted.
    """


for _register in COMMANDS:
    _register(cli)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `grace` console script; returns the exit code."""
    try:
        cli.main(
            args=list(argv) if argv is not None else None, prog_name="grace", standalone_mode=True
        )
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0
