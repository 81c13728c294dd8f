"""Memory under steady load: does any component keep growing?

Boots `grace up --with-examples` on free ports and drives it through the REST gateway at a
steady rate (by default 105 event publishes/s and 2 three-step document workflows/s, as in
the measurement this benchmark answers), sampling every process's PSS (/proc smaps_rollup)
every `--interval` seconds. After the warm-up it fits a least-squares line to each
process's PSS and reports its slope in MB per 30 minutes, beside the target (flat: under
2 MB per component per 30 minutes), and the slope of the window's second half alone (a
bounded cache still filling after the warm-up levels off there; a leak does not). Errors
of the load are counted: a leak fix that drops work does not pass. With each sample it
reads the bus's statistics and reports the largest lag of each push subscription: events a
subscriber has not taken yet are held by the bus.

With `--heap-profile`, the servers trace their allocations (GRACE_HEAP_PROFILE_DIR) and
take a heap snapshot at the end of the warm-up and at the end of the run (SIGUSR1); for
the two traced processes that grew most, the lines whose allocations grew are printed, and
what grew outside Python's heap (SQLite's caches, the C allocator's used and kept bytes).
Tracing every process slows the whole machine down; `--heap-profile memory,immutable_log`
traces only the named services (the growers a run without it found).

    .venv/bin/python benchmarks/soak.py                     # 30 minutes, 5 of warm-up
    .venv/bin/python benchmarks/soak.py --minutes 8 --warmup 3 --heap-profile memory

Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Grace, memory_by_process, start_grace

TARGET_MB_PER_30_MIN = 2.0

WORKFLOW = {
    "name": "soak_document",
    "steps": [
        {"id": "ingest", "domain_id": "data_domain", "action": "ingest"},
        {"id": "analyze", "domain_id": "ai_domain", "action": "analyze", "depends_on": ["ingest"]},
        {"id": "store", "domain_id": "memory_domain", "action": "store", "depends_on": ["analyze"]},
    ],
}


class Load:
    """Steady publishes and workflows through the gateway; counts what failed."""

    def __init__(self, http: httpx.AsyncClient, workflow_id: str) -> None:
        self.http = http
        self.workflow_id = workflow_id
        self.publishes = 0
        self.workflows = 0
        self.errors: dict[str, int] = {}

    def _failed(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    async def publish(self, n: int) -> None:
        try:
            response = await self.http.post(
                "/domains/events/publish",
                json={
                    "event_type": "soak.tick",
                    "source_domain": "soak",
                    "data": {"n": n, "text": "steady load " * 4},
                },
            )
            if response.status_code == 200:
                self.publishes += 1
            else:
                self._failed(f"publish {response.status_code}")
        except httpx.HTTPError as exc:
            self._failed(f"publish {type(exc).__name__}")

    async def workflow(self, n: int) -> None:
        document = {"document": {"title": f"soak {n}", "text": f"Run {n} went well. " * 8}}
        try:
            response = await self.http.post(
                f"/domains/workflows/execute/{self.workflow_id}",
                json={"input": document, "wait": True},
            )
            state = response.json().get("execution", {}).get("state", "")
            if response.status_code == 200 and state.endswith("SUCCEEDED"):
                self.workflows += 1
            else:
                self._failed(f"workflow {response.status_code} {state}")
        except (httpx.HTTPError, ValueError) as exc:
            self._failed(f"workflow {type(exc).__name__}")

    async def run(self, rate: float, action: str, until: float, in_flight: int) -> None:
        """Starts `action` `rate` times a second (without waiting for each) until `until`,
        with at most `in_flight` unanswered: a system that cannot keep up slows the load
        down (the achieved rate is reported) instead of drowning in connections."""
        if rate <= 0:
            return
        step = getattr(self, action)
        slots = asyncio.Semaphore(in_flight)
        running: set[asyncio.Task[None]] = set()

        async def one(n: int) -> None:
            try:
                await step(n)
            finally:
                slots.release()

        n = 0
        next_at = time.monotonic()
        while time.monotonic() < until:
            await slots.acquire()
            task = asyncio.create_task(one(n))
            running.add(task)
            task.add_done_callback(running.discard)
            n += 1
            next_at = max(next_at + 1 / rate, time.monotonic() - 1.0)
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.gather(*running)


async def until_registered(
    http: httpx.AsyncClient, domains: list[str], within_s: float = 120
) -> None:
    """Waits until the registry knows every domain the workflow names: "Grace is up" means
    its components serve, while the example domains may still be registering (slower still
    when every process traces its allocations)."""
    deadline = time.monotonic() + within_s
    for domain in domains:
        while (await http.get(f"/domains/domain/{domain}")).status_code != 200:
            if time.monotonic() > deadline:
                raise SystemExit(f"{domain} did not register within {within_s:g}s")
            await asyncio.sleep(0.5)


def slope_mb_per_30_min(points: list[tuple[float, int]]) -> float:
    """Least-squares slope of (seconds, kB) points, in MB per 30 minutes."""
    if len(points) < 2:
        return 0.0
    xs = [x for x, _ in points]
    ys = [y / 1024 for _, y in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    if var == 0:
        return 0.0
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    return cov / var * 1800


def later_half(points: list[tuple[float, int]]) -> list[tuple[float, int]]:
    """The points from the middle of their time span on."""
    if not points:
        return []
    middle = (points[0][0] + points[-1][0]) / 2
    return [point for point in points if point[0] >= middle]


async def push_lags(http: httpx.AsyncClient, lags: dict[str, int]) -> None:
    """Raises each push subscription's entry in `lags` (`domain pattern,...`) to the lag the
    bus reports now: a subscriber that falls behind makes the bus hold its events, which
    shows in the bus's memory and not in the subscriber's."""
    try:
        stats = (await http.get("/domains/events/stats")).json()
    except (httpx.HTTPError, ValueError):
        return  # the load counts errors; a missed sample only narrows the maximum
    for sub in stats.get("subscriptions", []):
        name = f"{sub.get('domain_id', '')} {','.join(sub.get('patterns', []))}"
        lags[name] = max(lags.get(name, 0), int(sub.get("lag", 0)))


def is_traced(process: str, services: str) -> bool:
    """Whether a process (named by its module) traces its allocations: every server and
    Guardian (not the fork server) when `services` is empty, else those whose service (the
    module's last part, `guardian` for Guardian's process) it names. An untraced server has
    no SIGUSR1 handler, and the signal would end it."""
    if process == "grace up + guardian":
        process = "guardian"
    elif process == "services.guardian.zygote" or (
        process != "gateway" and not process.startswith(("services.", "examples."))
    ):
        return False  # the fork server serves nothing and has no handler
    wanted = {s.strip() for s in services.split(",")} - {""}
    return not wanted or process.rsplit(".", 1)[-1] in wanted


def count_restarts(guardian_log: str) -> int:
    """How many times Guardian started a component again, whatever the reason (a crash, a
    failed probe, a healing playbook): each start beyond a component's first."""
    starts = re.findall(r" (\S+) started: pid \d+", guardian_log)
    return len(starts) - len(set(starts))


def restart_reasons(guardian_log: str) -> list[str]:
    """Guardian's lines that say why a component went down or who asked for a restart (a
    crash, failed probes, a healing playbook): its log goes with the run's temporary
    directory, so they are printed."""
    return re.findall(
        r"^.* (?:WARNING services\.guardian\.\S+|\S+ services\.guardian\.\S+ .*heal).*$",
        guardian_log,
        re.M,
    )


async def immune_findings(http: httpx.AsyncClient) -> list[str]:
    """What the immune system saw and did during the run: each anomaly (the series, its
    baseline and the values that raised it) and each remediation, oldest first."""
    lines = []
    anomalies = await http.get("/kernels/immune/anomalies", params={"page_size": 100})
    for item in reversed(anomalies.json().get("anomalies", []) if anomalies.is_success else []):
        values = ", ".join(f"{point['value']:.4g}" for point in item.get("evidence", []))
        lines.append(
            f"anomaly {item['detected_at']} {item['component']} {item['metric']} "
            f"{item['kind']}: median {item.get('median', 0):.4g}, values {values}"
        )
    remediations = await http.get("/kernels/immune/remediations", params={"page_size": 100})
    for item in reversed(
        remediations.json().get("remediations", []) if remediations.is_success else []
    ):
        lines.append(
            f"remediation {item['started_at']} {item['component']} {item['kind']} "
            f"{item.get('playbook', '')}: {item['outcome']} ({item.get('reason', '')})"
        )
    return lines


def snapshot_all(grace: Grace, services: str) -> int:
    """Asks every traced process for a heap snapshot; returns how many were asked."""
    asked = 0
    for name, (pid, _, _) in memory_by_process(grace.pid).items():
        if is_traced(name, services):
            os.kill(pid, signal.SIGUSR1)
            asked += 1
    return asked


def heap_growth(profile_dir: Path, pid: int, top: int = 8) -> list[str]:
    """The lines whose allocations grew most between a process's first and last snapshot."""
    files = sorted(
        profile_dir.glob(f"*-{pid}-*.tracemalloc"),
        key=lambda p: int(p.stem.rsplit("-", 1)[1]),
    )
    if len(files) < 2:
        return ["(no pair of snapshots: was it restarted?)"]
    first = tracemalloc.Snapshot.load(str(files[0]))
    last = tracemalloc.Snapshot.load(str(files[-1]))
    lines = []
    for stat in last.compare_to(first, "lineno")[:top]:
        frame = stat.traceback[0]
        lines.append(
            f"{stat.size_diff / 1024:+9.1f} kB {stat.count_diff:+7d} blocks  "
            f"{frame.filename.removeprefix(str(Path.cwd()) + '/')}:{frame.lineno}"
        )
    return lines


def native_growth(profile_dir: Path, pid: int) -> str:
    """How a process's memory outside Python's heap changed between its first and last
    snapshot (`services.common.heap.native_memory`), holder by holder, in MB."""
    files = sorted(
        profile_dir.glob(f"*-{pid}-*.native.json"),
        key=lambda p: int(p.name.split(".")[0].rsplit("-", 1)[1]),
    )
    if len(files) < 2:
        return "(no pair of native figures)"
    first, last = (json.loads(f.read_text()) for f in (files[0], files[-1]))
    parts = []
    for key in ("pss", "anonymous", "python_traced", "malloc_in_use", "sqlite", "malloc_free"):
        if first.get(key) is not None and last.get(key) is not None:
            parts.append(f"{key} {(last[key] - first[key]) / 2**20:+.2f}")
    parts.append(f"threads {first['threads']} -> {last['threads']}")
    return "native (MB): " + ", ".join(parts)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="whole run")
    parser.add_argument("--warmup", type=float, default=5.0, help="minutes before fitting")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--publish-rate", type=float, default=105.0)
    parser.add_argument("--workflow-rate", type=float, default=2.0)
    parser.add_argument(
        "--heap-profile",
        nargs="?",
        const="",
        default=None,
        metavar="SERVICES",
        help="trace allocations: of every server, or of these (comma-separated service names)",
    )
    options = parser.parse_args()
    if options.warmup >= options.minutes:
        parser.error("--warmup must be shorter than --minutes")

    profile_dir = Path(tempfile.mkdtemp(prefix="grace-heap-"))
    env = dict(os.environ)
    tracing = options.heap_profile is not None
    if tracing:
        env["GRACE_HEAP_PROFILE_DIR"] = str(profile_dir)
        env["GRACE_HEAP_PROFILE_SERVICES"] = options.heap_profile
    samples: dict[str, list[tuple[float, int]]] = {}
    pids: dict[str, int] = {}
    async with (
        start_grace(examples=True, env=env) as grace,
        grace.http_client(timeout=60) as http,
    ):
        await until_registered(http, [step["domain_id"] for step in WORKFLOW["steps"]])
        created = await http.post("/domains/workflows/create", json=WORKFLOW)
        created.raise_for_status()
        load = Load(http, created.json()["workflow_id"])
        began = time.monotonic()
        end = began + options.minutes * 60
        warm_at = began + options.warmup * 60
        drivers = [
            asyncio.create_task(load.run(options.publish_rate, "publish", end, 32)),
            asyncio.create_task(load.run(options.workflow_rate, "workflow", end, 16)),
        ]
        snapshots_asked = 0
        lags: dict[str, int] = {}
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= warm_at:
                if tracing and not snapshots_asked:
                    snapshots_asked = snapshot_all(grace, options.heap_profile)
                for name, (pid, pss, _) in memory_by_process(grace.pid).items():
                    samples.setdefault(name, []).append((now - began, pss))
                    pids[name] = pid
                await push_lags(http, lags)
            await asyncio.sleep(min(options.interval, max(0.0, end - time.monotonic())))
        await asyncio.gather(*drivers)
        for name, (_pid, pss, _) in memory_by_process(grace.pid).items():
            samples.setdefault(name, []).append((time.monotonic() - began, pss))
        if tracing:
            # Each process writes its own snapshot, which takes a while with many traces;
            # its native figures are written last, so they count finished snapshots.
            snapshots_asked += snapshot_all(grace, options.heap_profile)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                written = await asyncio.to_thread(
                    lambda: len(list(profile_dir.glob("*.native.json")))
                )
                if written >= snapshots_asked:
                    break
                await asyncio.sleep(1)
        guardian_log = await asyncio.to_thread((grace.data_dir / "logs" / "guardian.log").read_text)
        restarts = count_restarts(guardian_log)
        reasons = restart_reasons(guardian_log) + await immune_findings(http)

    slopes = {name: slope_mb_per_30_min(points) for name, points in samples.items()}
    # The same fit over the second half of the window alone: a bounded cache that is still
    # filling after the warm-up slopes the whole fit and then levels off; a leak does not.
    late_slopes = {
        name: slope_mb_per_30_min(later_half(points)) for name, points in samples.items()
    }
    print(
        f"soak: {options.minutes:g} min ({options.warmup:g} warm-up), "
        f"{load.publishes} publishes, {load.workflows} workflows, "
        f"{sum(load.errors.values())} errors {load.errors or ''}, "
        f"{restarts} component restarts"
    )
    for line in reasons:
        print(f"  {line}")
    print(
        f"{'process':<34} {'PSS MB start':>12} {'end':>8} {'MB / 30 min':>12} "
        f"{'(last half)':>12}  target"
    )
    for name in sorted(slopes, key=lambda n: -slopes[n]):
        first, last = samples[name][0][1] / 1024, samples[name][-1][1] / 1024
        verdict = "ok" if slopes[name] < TARGET_MB_PER_30_MIN else "GROWS"
        print(
            f"{name:<34} {first:12.1f} {last:8.1f} {slopes[name]:12.2f} "
            f"{late_slopes[name]:12.2f}  {verdict}"
        )
    laggards = sorted(lags.items(), key=lambda item: -item[1])[:3]
    print(
        "largest push subscription lag seen after the warm-up (events the bus held): "
        + ", ".join(f"{name} {lag}" for name, lag in laggards)
    )
    if tracing:
        traced = [n for n in slopes if is_traced(n, options.heap_profile)]
        for name in sorted(traced, key=lambda n: -slopes[n])[:2]:
            print(f"\nheap growth of {name} (pid {pids.get(name)}):")
            print("  " + native_growth(profile_dir, pids.get(name, 0)))
            for line in heap_growth(profile_dir, pids.get(name, 0)):
                print("  " + line)
    print(
        json.dumps(
            {
                "benchmark": "soak",
                "minutes": options.minutes,
                "warmup_minutes": options.warmup,
                "publishes": load.publishes,
                "workflows": load.workflows,
                "errors": sum(load.errors.values()),
                "restarts": restarts,
                "max_slope_mb_per_30_min": round(max(slopes.values(), default=0.0), 2),
                "slopes_mb_per_30_min": {n: round(v, 2) for n, v in slopes.items()},
                "last_half_slopes_mb_per_30_min": {n: round(v, 2) for n, v in late_slopes.items()},
                "target_mb_per_30_min": TARGET_MB_PER_30_MIN,
                "max_push_lag": max(lags.values(), default=0),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
