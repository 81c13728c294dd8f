"""Runs a fork server forked from its own process (`Zygote.fork_early`), as `grace up`
does, for the fork-server tests, and prints one JSON line of what it saw.

The tests cannot fork their own process this way: a component ends by unwinding through
the frames below the fork, which there would be pytest's.

Run as `python -m tests.guardian.early_fork_driver DIR`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from services.guardian.process import ChildProcess, Zygote
from tests.support import eventually

PROBE = "tests.guardian.forked_probe"


def probe(zygote: Zygote, directory: Path, *args: str) -> ChildProcess:
    return ChildProcess(
        "probe",
        [sys.executable, "-m", PROBE, *args],
        {"PATH": os.environ["PATH"]},
        directory / "probe.log",
        cwd=directory,
        module=PROBE,
        zygote=zygote,
    )


def read(path: Path) -> str:
    return path.read_bytes().decode()


async def drive(zygote: Zygote, directory: Path) -> dict[str, Any]:
    await zygote.start()
    seen: dict[str, Any] = {"driver": os.getpid()}
    report = directory / "report.json"
    ended = probe(zygote, directory, "--report", str(report), "--code", "3", "--imported", __name__)
    await ended.spawn()
    seen["code"] = await ended.wait()
    seen["report"] = json.loads(await asyncio.to_thread(read, report))
    sleeper = probe(zygote, directory, "--sleep", "60")
    await sleeper.spawn()
    await eventually(lambda: "probe waiting" in sleeper.tail(), what="the probe to wait")
    seen["stopped_code"] = await sleeper.stop(timeout_s=10)
    seen["log"] = await asyncio.to_thread(read, directory / "probe.log")
    fork_server = zygote._proc
    assert fork_server is not None
    seen["fork_server"] = fork_server.pid
    seen["fork_server_title"] = await asyncio.to_thread(
        read, Path(f"/proc/{fork_server.pid}/cmdline")
    )
    await zygote.close()
    seen["fork_server_code"] = fork_server.returncode
    return seen


def main() -> int:
    directory = Path(sys.argv[1])
    zygote = Zygote([PROBE], dict(os.environ))
    zygote.fork_early()  # a component forked from it ends by raising SystemExit out of here
    print(json.dumps(asyncio.run(drive(zygote, directory))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
