"""What `grace up` prints: a console that went away never stops Guardian's work."""

from __future__ import annotations

import io
from pathlib import Path

from services.cli.up import ConsoleReporter
from services.guardian.model import ComponentStatus, State, StateChange
from services.guardian.topology import ComponentSpec


class _ClosedPipe(io.StringIO):
    """A stdout whose reader has gone: every write fails as a broken pipe does."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0

    def write(self, text: str) -> int:
        self.attempts += 1
        raise BrokenPipeError(32, "Broken pipe")


def _status(state: State) -> ComponentStatus:
    return ComponentStatus(
        spec=ComponentSpec(name="registry", port=50051),
        host="127.0.0.1",
        port=50051,
        log_path=Path("registry.log"),
        state=state,
        pid=42,
    )


def test_a_reader_that_went_away_leaves_every_report_harmless() -> None:
    out = _ClosedPipe()
    reporter = ConsoleReporter(out)
    reporter.changed(StateChange(_status(State.STARTING), State.PENDING))
    reporter.booted([_status(State.SERVING)], "127.0.0.1:50050")
    reporter.stopping()  # before, this raised and the components were never stopped
    assert out.attempts == 1  # the first failure ends the printing


def test_a_live_console_gets_each_line() -> None:
    out = io.StringIO()
    reporter = ConsoleReporter(out)
    reporter.changed(StateChange(_status(State.STARTING), State.PENDING))
    reporter.stopping()
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("registry: PENDING -> STARTING (pid 42, port 50051)")
    assert lines[1] == "stopping Grace: components in reverse boot order..."
