"""Keeps the data dir private: what Grace stores there is for Grace's user alone.

The data dir holds the databases (documents, execution inputs and outputs, memory, the
log), the logs and the signing keys. `secure_data_dir` runs first thing in every process
that writes there (the server bootstrap `services.common.server.run`, Guardian, `grace up`):

- it sets the process umask to 077, so every file created afterwards (a database and its
  `-wal`/`-shm` files, a log, a key) is 0600 and every directory 0700, and the children
  Guardian starts inherit it;
- it creates the data dir 0700, or makes an existing one 0700;
- it tightens what an earlier, laxer run left behind: Grace's files in the data dir and
  in its `logs/` (by name: databases with their journals, logs, keys) become 0600.

Only Grace's own files are touched: a data dir pointed at a directory holding other
things gets 0700 on itself (which already keeps others out of everything below it) and no
change to files it does not recognise.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077
DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
# Names of files Grace writes in the data dir and in `logs/`.
_SUFFIXES = (".db", ".db-wal", ".db-shm", ".db-journal", ".key", ".pub", ".log")


def secure_data_dir(data_dir: Path) -> None:
    """Sets the umask and makes the data dir and Grace's files in it private (see the
    module docstring). Idempotent; cheap enough to run at every start."""
    os.umask(PRIVATE_UMASK)
    data_dir.mkdir(parents=True, exist_ok=True, mode=DIRECTORY_MODE)
    _chmod(data_dir, DIRECTORY_MODE)
    logs = data_dir / "logs"
    for directory in (data_dir, logs):
        if directory.is_symlink() or not directory.is_dir():
            continue
        if directory is logs:
            _chmod(logs, DIRECTORY_MODE)
        for entry in directory.iterdir():
            if entry.name.endswith(_SUFFIXES) and not entry.is_symlink() and entry.is_file():
                _chmod(entry, FILE_MODE)


def _chmod(path: Path, mode: int) -> None:
    try:
        if stat.S_IMODE(path.stat().st_mode) != mode:
            path.chmod(mode)
    except OSError as exc:
        log.warning("cannot make %s private (mode %o): %s", path, mode, exc)
