"""`python -m services.kernels.scheduler`: runs the scheduler kernel until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import sys

from services.common.config import ServerConfig
from services.common.server import Service, serve_main
from services.kernels.scheduler.config import SERVICE, SchedulerConfig
from services.kernels.scheduler.server import SchedulerServer


def main(argv: list[str] | None = None) -> int:
    """Parses flags and env, then serves."""

    def build(flags: argparse.Namespace) -> tuple[ServerConfig, Service]:
        config = SchedulerConfig.from_env(flags=flags)
        return config.server, SchedulerServer(config)

    return serve_main(SERVICE, build, argv)


if __name__ == "__main__":
    sys.exit(main())
