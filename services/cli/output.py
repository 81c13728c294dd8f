"""How `grace` commands print: tables on a terminal, JSON when piped, YAML on request.

Every command that answers with data takes `-o table|json|yaml`. Without it the format
follows where stdout goes: a table for a person at a terminal, JSON for a script. Colours
appear only on a terminal (and never with NO_COLOR set); JSON and YAML carry the proto3
JSON mapping with the proto field names, as the REST gateway does, every field present.
Streams (`watch`, `tail`) print one line per item in a table, one JSON document per line
(JSON Lines) or one YAML document per item.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table
from rich.text import Text

FORMATS = ("table", "json", "yaml")

# Words that colour a state cell on a terminal, by the state's last word.
_GOOD = {"SERVING", "HEALTHY", "SUCCEEDED", "APPROVED", "ALLOW", "PERMIT", "OK", "VERIFIED"}
_BAD = {
    "FAILED",
    "UNHEALTHY",
    "NOT_SERVING",
    "ROLLED_BACK",
    "COMPENSATION_FAILED",
    "REJECTED",
    "DENY",
    "FORBID",
    "EXPIRED",
    "INVALID",
}
_BUSY = {"RUNNING", "STARTING", "PENDING", "DEGRADED", "COMPENSATING", "BACKOFF", "STOPPING"}

# Wide enough that a piped table never wraps a row.
_PIPE_WIDTH = 4096
# Longest cell in a table; the whole value is in -o json or -o yaml.
MAX_CELL = 80
_TIMESTAMP = re.compile(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(\.\d+)?Z")


def to_data(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data: proto field names, every field present, enums by name."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def short(value: object, prefix: str = "") -> str:
    """An enum name without its type prefix (`DOMAIN_STATUS_HEALTHY` -> `HEALTHY`)."""
    text = str(value)
    if prefix and text.startswith(prefix):
        return text[len(prefix) :]
    return text


def state_style(state: str) -> str:
    """The Rich style of a state word: green when good, red when bad, yellow when busy."""
    word = state.upper()
    if word in _GOOD:
        return "green"
    if word in _BAD:
        return "red"
    if word in _BUSY:
        return "yellow"
    return ""


@dataclass(frozen=True)
class Column:
    """One column of a table: its header and how to get the cell from an item.

    Attributes:
        header: The column's title.
        value: The cell's text, from one item of the data.
        styled: Colour the cell by its state word.
        width: Width a stream line pads the cell to (tables size columns themselves).
    """

    header: str
    value: Callable[[Mapping[str, Any]], object]
    styled: bool = False
    width: int = 0


def path(dotted: str, prefix: str = "") -> Callable[[Mapping[str, Any]], object]:
    """A getter of `a.b.c` in nested data; an enum's `prefix` is cut off."""

    def get(item: Mapping[str, Any]) -> object:
        value: Any = item
        for part in dotted.split("."):
            value = value.get(part, "") if isinstance(value, Mapping) else ""
        return short(value, prefix) if prefix else value

    return get


def cell(value: object) -> str:
    """The text of a table cell: lists joined, nested data as compact JSON, timestamps to
    the second (UTC), empty as '-', anything longer than MAX_CELL cut with '…'."""
    if value is None or value == "" or value == [] or value == {}:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        text = ",".join(str(v) for v in value)
    elif isinstance(value, dict | list):
        text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    else:
        text = str(value)
        stamp = _TIMESTAMP.fullmatch(text)
        if stamp:
            text = f"{stamp.group(1)} {stamp.group(2)}"
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


@dataclass
class Printer:
    """Prints data in the chosen format to stdout; notes and progress go to stderr.

    Attributes:
        format: "table", "json" or "yaml".
        out: Where data goes (stdout).
        err: Where progress and notes go (stderr).
    """

    format: str
    out: Console
    err: Console
    _stream_header_done: bool = field(default=False, repr=False)

    @classmethod
    def create(
        cls, format: str | None, stdout: TextIO | None = None, stderr: TextIO | None = None
    ) -> Printer:
        """A printer on stdout/stderr; `format` None picks table on a terminal, else JSON."""
        stdout = stdout or sys.stdout
        stderr = stderr or sys.stderr
        chosen = format or ("table" if stdout.isatty() else "json")
        return cls(chosen, _console(stdout), _console(stderr))

    @property
    def is_table(self) -> bool:
        return self.format == "table"

    # ---- whole answers -----------------------------------------------------------------

    def items(self, items: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> None:
        """A list: a table with a row per item, or a JSON/YAML list."""
        if not self.is_table:
            self.data(list(items))
            return
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in columns:
            table.add_column(column.header, overflow="fold")
        for item in items:
            table.add_row(*(self._cell(column, item) for column in columns))
        self.out.print(table)

    def record(self, item: Mapping[str, Any], columns: Sequence[Column] | None = None) -> None:
        """One object: a FIELD/VALUE table (the given columns, else every top-level field)."""
        if not self.is_table:
            self.data(item)
            return
        table = Table(box=None, show_header=False, pad_edge=False)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        if columns is None:
            columns = [Column(key, path(key)) for key in item]
        for column in columns:
            table.add_row(column.header, self._cell(column, item))
        self.out.print(table)

    def data(self, data: object) -> None:
        """Data as JSON or YAML (tables fall back to JSON for free-form data)."""
        if self.format == "yaml":
            self.out.print(
                yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip("\n"),
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        else:
            self.out.print(
                json.dumps(data, indent=2, ensure_ascii=False),
                markup=False,
                highlight=False,
                soft_wrap=True,
            )

    def line(self, text: str | Text) -> None:
        """A line for people in table format (a summary under a table)."""
        self.out.print(text, markup=False, highlight=False, soft_wrap=True)

    # ---- streams -----------------------------------------------------------------------

    def stream_item(self, item: Mapping[str, Any], columns: Sequence[Column]) -> None:
        """One item of a stream: a table line (a header before the first), a JSON line or
        a YAML document."""
        if self.format == "json":
            self.out.print(
                json.dumps(item, separators=(",", ":"), ensure_ascii=False),
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        elif self.format == "yaml":
            self.out.print(
                "---\n" + yaml.safe_dump(dict(item), sort_keys=False).rstrip("\n"),
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        else:
            last = len(columns) - 1
            if not self._stream_header_done:
                self._stream_header_done = True
                header = "  ".join(
                    c.header if i == last else c.header.ljust(max(c.width, len(c.header)))
                    for i, c in enumerate(columns)
                )
                self.out.print(Text(header, style="bold"))
            text = Text()
            for index, column in enumerate(columns):
                if index:
                    text.append("  ")
                value = cell(column.value(item))
                padded = (
                    value if index == last else value.ljust(max(column.width, len(column.header)))
                )
                text.append(padded, style=state_style(value) if column.styled else "")
            self.out.print(text, soft_wrap=True)
        self.out.file.flush()

    # ---- progress and notes (stderr) ---------------------------------------------------

    def note(self, text: str | Text) -> None:
        """A line for the person waiting, on stderr (never mixed into the data)."""
        self.err.print(text, markup=False, highlight=False, soft_wrap=True)

    def _cell(self, column: Column, item: Mapping[str, Any]) -> Text:
        value = cell(column.value(item))
        return Text(value, style=state_style(value) if column.styled else "")


def _console(stream: TextIO) -> Console:
    terminal = stream.isatty()
    return Console(
        file=stream,
        width=None if terminal else _PIPE_WIDTH,
        highlight=False,
        emoji=False,
        soft_wrap=False,
    )


COMPONENT_HEADERS = ("COMPONENT", "PORT", "PID", "STATE")


def component_table(rows: Sequence[tuple[str, int, int, str, str]]) -> str:
    """The plain table `grace up` prints: (component, port, pid, state, note) rows."""
    cells = [COMPONENT_HEADERS] + [
        (name, str(port), str(pid) if pid else "-", state + (f"  {note}" if note else ""))
        for name, port, pid, state, note in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COMPONENT_HEADERS) - 1)]
    return "\n".join(
        "  ".join(c.ljust(width) for c, width in zip(row[:-1], widths, strict=True))
        + "  "
        + row[-1]
        for row in cells
    )
