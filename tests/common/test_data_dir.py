"""The data dir and what Grace writes in it are private to Grace's user."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from services.common.data_dir import secure_data_dir
from tests.support import free_port

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def restored_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("restored_umask")
def test_an_existing_data_dir_and_grace_files_left_readable_are_made_private(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    (data / "logs").mkdir(parents=True)
    data.chmod(0o755)
    (data / "logs").chmod(0o755)
    grace_files = [
        data / "registry.db",
        data / "registry.db-wal",
        data / "registry.db-shm",
        data / "orchestrator.key",
        data / "orchestrator.pub",
        data / "logs" / "registry.log",
    ]
    for path in grace_files:
        path.write_text("x")
        path.chmod(0o644)
    other = data / "notes.txt"
    other.write_text("not Grace's")
    other.chmod(0o644)

    secure_data_dir(data)

    assert mode(data) == 0o700
    assert mode(data / "logs") == 0o700
    assert {p.name: mode(p) for p in grace_files} == {p.name: 0o600 for p in grace_files}
    assert mode(other) == 0o644
    # Everything created afterwards is private too.
    (data / "later.db").write_text("x")
    (data / "later").mkdir()
    assert mode(data / "later.db") == 0o600
    assert mode(data / "later") == 0o700


@pytest.mark.usefixtures("restored_umask")
def test_a_missing_data_dir_is_created_private(tmp_path: Path) -> None:
    data = tmp_path / "a" / "data"
    secure_data_dir(data)
    assert mode(data) == 0o700


@contextlib.asynccontextmanager
async def running_registry(data: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    env = {
        **os.environ,
        "GRACE_DATA_DIR": str(data),
        "GRACE_REGISTRY_PORT": str(free_port()),
        "GRACE_REGISTRY_HOST": "127.0.0.1",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.registry", env=env, cwd=PROJECT_ROOT
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)


@pytest.mark.slow
async def test_a_server_keeps_its_database_and_its_journal_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    async with running_registry(data):
        for _ in range(600):
            if (data / "registry.db-wal").exists():
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the registry did not open its database")
        files = sorted(p for p in data.iterdir() if p.name.startswith("registry.db"))
        assert {p.name for p in files} >= {"registry.db", "registry.db-wal"}
        assert mode(data) == 0o700
        assert {p.name: mode(p) for p in files} == {p.name: 0o600 for p in files}
