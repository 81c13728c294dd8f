"""Boot time and memory of `grace up` (the default topology), forked vs exec'd components.

Each run starts `grace up` on free loopback ports with a fresh data dir and times it until
it prints "Grace is up" (every component SERVING). After a short settle it reads every
process of the tree (grace up with Guardian, the fork server, the components) from /proc:
PSS from smaps_rollup (pages shared between processes are divided among them, so the total
counts them once) and RSS (counts them in every process). The baseline, in the same run, is
the same topology with the fork server off: every component a fresh interpreter.

Prints a table of min / median / max over the runs for each mode, the per-component PSS of
the median fork-server run, the boot timeline of the median fork-server run (from
Guardian's log: when each chunk began, when each component was forked and when it was
SERVING, in seconds since `grace up` was started), and one JSON line (`boot_s` and
`pss_total_mb` are the fork server's medians).

    .venv/bin/python benchmarks/footprint.py [--runs 5] [--settle 3]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import memory_by_process, start_grace


@dataclass
class Run:
    boot_s: float
    pss_kb: dict[str, int]
    rss_kb: dict[str, int]
    timeline: list[tuple[float, str]] = field(default_factory=list)

    @property
    def pss_total_mb(self) -> float:
        return sum(self.pss_kb.values()) / 1024

    @property
    def rss_total_mb(self) -> float:
        return sum(self.rss_kb.values()) / 1024


# Guardian's log lines that mark the boot: chunks, forks, SERVING, the fork server ready.
_BOOT_EVENT = re.compile(
    r"^(\S+ \S+) \S+ services\.guardian\.\w+ "
    r"(booting chunk .*|fork server ready|\S+ started: pid|\S+: STARTING -> SERVING)"
)


def boot_timeline(log_file: Path, started_at: float) -> list[tuple[float, str]]:
    """(seconds since `started_at`, event) for each boot event in Guardian's log."""
    events = []
    for line in log_file.read_text(errors="replace").splitlines():
        match = _BOOT_EVENT.match(line)
        if match is None:
            continue
        stamp = datetime.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        event = match[2].replace(" started: pid", " forked").replace(": STARTING -> ", " ")
        events.append((stamp - started_at, event))
    return events


async def one_run(fork_server: bool, settle_s: float) -> Run:
    config = f"[boot]\nfork_server = {'true' if fork_server else 'false'}\n"
    started_at = time.time()
    async with start_grace(config=config) as grace:
        await asyncio.sleep(settle_s)
        memory = memory_by_process(grace.pid)
        timeline = boot_timeline(grace.data_dir / "logs" / "guardian.log", started_at)
    return Run(
        grace.boot_s,
        {name: pss for name, (_, pss, _) in memory.items()},
        {name: rss for name, (_, _, rss) in memory.items()},
        timeline,
    )


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
    median_boot = sorted(forked, key=lambda r: r.boot_s)[len(forked) // 2]
    print(f"\nboot timeline, median fork-server run ({median_boot.boot_s:.2f} s), s since start:")
    for at, event in median_boot.timeline:
        print(f"  {at:6.2f}  {event}")
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
