"""`grace completion SHELL`: the shell completion script, from Click's completion support.

`eval "$(grace completion bash)"` (or zsh; `grace completion fish | source` for fish) makes
the shell complete commands, options and choices.
"""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

SHELLS = ("bash", "zsh", "fish")


def register(cli: click.Group) -> None:
    """Adds `grace completion`."""
    cli.add_command(completion)


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL; e.g. eval "$(grace completion bash)"."""
    completer = get_completion_class(shell)
    if completer is None:  # pragma: no cover - every listed shell has one
        raise click.UsageError(f"no completion for {shell}")
    root = ctx.find_root()
    script = completer(root.command, {}, "grace", "_GRACE_COMPLETE").source()
    click.echo(script)
