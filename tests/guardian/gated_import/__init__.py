"""A package whose import waits for a file (GRACE_TEST_IMPORT_GATE) and then writes one
(GRACE_TEST_IMPORT_MARK): tells when, and whether, a fork server imported it ahead."""

from __future__ import annotations

import os
import time
from pathlib import Path

_gate = os.environ.get("GRACE_TEST_IMPORT_GATE")
_mark = os.environ.get("GRACE_TEST_IMPORT_MARK")
if _gate and _mark:
    deadline = time.monotonic() + 60
    while not Path(_gate).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    Path(_mark).write_text(str(os.getpid()))
