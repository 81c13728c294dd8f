"""Boot time and memory of `grace up` (the default topology), forked vs exec'd components.

Each run starts `grace up` on free loopback ports with a fresh data dir and times it until
it prints "Grace is up" (every component SERVING). After a short settle it reads every
process of the tree (grace up with Guardian, the fork server, the components) from /proc:
PSS from smaps_rollup (pages shared between processes are divided among them, so the total
counts them once) and RSS (counts them in every process). The baseline, in the same run, is
the same topology with the fork server off: every component a fresh interpreter.

Prints a table of min / median / max over the runs for each mode, the per-component PSS of
the median fork-server run, and one JSON line (`boot_s` and `pss_total_mb` are the fork
server's medians).

    .venv/bin/python benchmarks/footprint.py [--runs 5] [--settle 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from services.guardian.topology import load_topology  # noqa: E402


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def process_tree(root: int) -> list[int]:
    """`root` and every descendant (by parent pid, from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def memory_kb(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of a process in kB."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Pss", "Rss"):
            values[key] = int(rest.split()[0])
    return values["Pss"], values["Rss"]


def command_name(pid: int) -> str:
    """A short name for a process: the module it runs (`-m`), else its command line. A
    forked component's title is one string with spaces: split on both."""
    words = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().split()
    if "-m" in words:
        return words[words.index("-m") + 1]
    return " ".join(words[:3])


@dataclass
class Run:
    boot_s: float
    pss_kb: dict[str, int]
    rss_kb: dict[str, int]

    @property
    def pss_total_mb(self) -> float:
        return sum(self.pss_kb.values()) / 1024

    @property
    def rss_total_mb(self) -> float:
        return sum(self.rss_kb.values()) / 1024


async def one_run(fork_server: bool, settle_s: float) -> Run:
    components = load_topology(None).components
    *ports, guardian_port = free_ports(len(components) + 1)
    with tempfile.TemporaryDirectory(prefix="grace-footprint-") as root:
        config = Path(root) / "grace.toml"
        config.write_text(
            f"[boot]\nfork_server = {'true' if fork_server else 'false'}\n"
            + "".join(
                f"[components.{c.name}]\nport = {port}\n"
                for c, port in zip(components, ports, strict=True)
            )
        )
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.cli",
            "up",
            "--config",
            str(config),
            "--data-dir",
            str(Path(root) / "data"),
            "--port",
            str(guardian_port),
            cwd=PROJECT_ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        assert proc.stdout is not None
        output = []
        try:
            while True:
                line = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode()
                if not line:
                    raise RuntimeError("grace up exited before it was up:\n" + "".join(output))
                output.append(line)
                if line.startswith("Grace is up"):
                    break
            boot_s = time.perf_counter() - started
            drain = asyncio.create_task(proc.stdout.read())
            await asyncio.sleep(settle_s)
            pss: dict[str, int] = {}
            rss: dict[str, int] = {}
            for pid in process_tree(proc.pid):
                try:
                    name = "grace up + guardian" if pid == proc.pid else command_name(pid)
                    p, r = memory_kb(pid)
                except (OSError, KeyError):
                    continue
                while name in pss:
                    name += "'"
                pss[name], rss[name] = p, r
        finally:
            if proc.returncode is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    os.killpg(proc.pid, signal.SIGKILL)
                    await proc.wait()
        drain.cancel()
        return Run(boot_s, pss, rss)


def spread(values: list[float]) -> str:
    return f"{min(values):7.2f} {statistics.median(values):7.2f} {max(values):7.2f}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after boot")
    options = parser.parse_args()
    results: dict[str, list[Run]] = {"exec": [], "fork server": []}
    for _ in range(options.runs):  # interleaved, so drift in the machine's load hits both
        results["exec"].append(await one_run(False, options.settle))
        results["fork server"].append(await one_run(True, options.settle))
    print(f"grace up, default topology, {options.runs} runs each (min / median / max)")
    print(f"{'mode':<12} {'boot s':>23} {'PSS total MB':>23} {'RSS total MB':>23}")
    for mode, runs in results.items():
        print(
            f"{mode:<12} {spread([r.boot_s for r in runs])} "
            f"{spread([r.pss_total_mb for r in runs])} {spread([r.rss_total_mb for r in runs])}"
        )
    forked, execd = results["fork server"], results["exec"]
    boot = statistics.median(r.boot_s for r in forked)
    pss = statistics.median(r.pss_total_mb for r in forked)
    exec_boot = statistics.median(r.boot_s for r in execd)
    exec_pss = statistics.median(r.pss_total_mb for r in execd)
    print(f"fork server / exec: boot {boot / exec_boot:.2f}x, PSS {pss / exec_pss:.2f}x")
    median_run = sorted(forked, key=lambda r: r.pss_total_mb)[len(forked) // 2]
    print("\nper process, median fork-server run (PSS / RSS MB):")
    for name in sorted(median_run.pss_kb, key=lambda n: -median_run.pss_kb[n]):
        pss_mb, rss_mb = median_run.pss_kb[name] / 1024, median_run.rss_kb[name] / 1024
        print(f"  {name:<40} {pss_mb:7.1f} {rss_mb:7.1f}")
    print(
        json.dumps(
            {
                "benchmark": "footprint",
                "runs": options.runs,
                "boot_s": round(boot, 3),
                "pss_total_mb": round(pss, 1),
                "rss_total_mb": round(statistics.median(r.rss_total_mb for r in forked), 1),
                "exec_boot_s": round(exec_boot, 3),
                "exec_pss_total_mb": round(exec_pss, 1),
                "processes": len(median_run.pss_kb),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
