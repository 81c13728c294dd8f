"""How the `grace` commands print components."""

from __future__ import annotations

from collections.abc import Sequence

HEADERS = ("COMPONENT", "PORT", "PID", "STATE")


def component_table(rows: Sequence[tuple[str, int, int, str, str]]) -> str:
    """A table of (component, port, pid, state, note) rows; the note follows the state."""
    cells = [HEADERS] + [
        (name, str(port), str(pid) if pid else "-", state + (f"  {note}" if note else ""))
        for name, port, pid, state, note in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADERS) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True))
        + "  "
        + row[-1]
        for row in cells
    )
