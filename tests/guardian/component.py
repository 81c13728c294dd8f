"""A tiny component for Guardian's tests: serves grpc.health.v1 and misbehaves on request.

Run as `python -m tests.guardian.component --name NAME [options]`; it binds 127.0.0.1 on
`GRACE_<NAME>_PORT`, as Guardian tells every child.

Options:
    --delay S          become SERVING S seconds after binding (default 0)
    --never            never become SERVING
    --exit-after S     exit S seconds after binding, with --code (default 1)
    --crash-if FILE    exit with code 3 at once when FILE exists (to make a crash loop)
    --sick-if FILE     report NOT_SERVING while FILE exists
    --linger S         on a stop signal, wait S seconds before stopping (a slow stop)
    --record FILE      append "<name> started|serving <time>" lines to FILE
    --env-file FILE    write the environment it runs with to FILE, as JSON
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.config import SecurityConfig
from services.common.server import server_credentials


def _record(path: str | None, name: str, what: str) -> None:
    if path:
        with open(path, "a") as out:
            out.write(f"{name} {what} {time.time():.6f}\n")


def _exists(path: str) -> bool:
    # A stat of a local file; quick enough for a test component's loop.
    return Path(path).exists()


async def _serve(args: argparse.Namespace) -> int:
    port = int(os.environ[f"GRACE_{args.name.upper()}_PORT"])
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    # Secure like every Grace server, with the certificate Guardian issued it.
    security = SecurityConfig.from_env(args.name, Path("."), os.environ)
    if security is None:
        server.add_insecure_port(f"127.0.0.1:{port}")
    else:
        server.add_secure_port(f"127.0.0.1:{port}", server_credentials(security))
    await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    _record(args.record, args.name, "started")
    if args.env_file:
        with open(args.env_file, "w") as out:  # noqa: ASYNC230  # a test component, at start
            json.dump(dict(os.environ), out)
    print(f"{args.name} listening on {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    began = time.monotonic()
    serving = False
    while not stop.is_set():
        elapsed = time.monotonic() - began
        if args.exit_after is not None and elapsed >= args.exit_after:
            print(f"{args.name} exiting with code {args.code}", flush=True)
            return int(args.code)
        sick = bool(args.sick_if) and _exists(args.sick_if)
        want = not args.never and elapsed >= args.delay and not sick
        if want != serving:
            serving = want
            status = health_pb2.HealthCheckResponse.SERVING if want else 0
            await servicer.set("", status or health_pb2.HealthCheckResponse.NOT_SERVING)
            if want:
                _record(args.record, args.name, "serving")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.05)
    await asyncio.sleep(args.linger)
    await servicer.enter_graceful_shutdown()
    await server.stop(0.2)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--never", action="store_true")
    parser.add_argument("--exit-after", type=float)
    parser.add_argument("--code", type=int, default=1)
    parser.add_argument("--crash-if")
    parser.add_argument("--sick-if")
    parser.add_argument("--linger", type=float, default=0.0)
    parser.add_argument("--record")
    parser.add_argument("--env-file")
    args = parser.parse_args()
    if args.crash_if and Path(args.crash_if).exists():
        print(f"{args.name}: crash file present, exiting with code 3", flush=True)
        return 3
    return asyncio.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
