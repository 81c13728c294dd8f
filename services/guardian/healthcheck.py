"""One health check from the command line, for container health checks.

    python -m services.guardian.healthcheck 127.0.0.1:8102
    python -m services.guardian.healthcheck 127.0.0.1:8000 --http /health

Exits 0 when the component answers SERVING (grpc.health.v1 Check, or a 2xx for `--http`),
1 otherwise, printing what it saw. Container engines without a native gRPC probe (Compose)
run it inside the component's image; Kubernetes uses its own gRPC probe instead.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from services.common.channels import channel
from services.guardian.probe import HealthClient, Observation, check_once, http_check


async def _check(address: str, service: str, http_path: str, timeout_s: float) -> Observation:
    if http_path:
        return await http_check(address, http_path, timeout_s)
    async with channel(address) as chan:
        return await check_once(HealthClient(chan), service, timeout_s)


def main(argv: list[str] | None = None) -> int:
    """Runs one check; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m services.guardian.healthcheck")
    parser.add_argument("address", help="host:port of the component")
    parser.add_argument("--service", default="", help="gRPC service name ('' for overall)")
    parser.add_argument("--http", default="", help="check HTTP GET PATH instead of gRPC")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    args = parser.parse_args(argv)
    observation = asyncio.run(_check(args.address, args.service, args.http, args.timeout))
    print(observation.status, observation.error)
    return 0 if observation.serving else 1


if __name__ == "__main__":
    sys.exit(main())
