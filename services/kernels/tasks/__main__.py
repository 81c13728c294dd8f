"""`python -m services.kernels.tasks`: runs the tasks kernel until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import sys

from services.common.config import ServerConfig
from services.common.server import Service, serve_main
from services.kernels.tasks.config import SERVICE, TasksConfig
from services.kernels.tasks.server import TasksServer


def main(argv: list[str] | None = None) -> int:
    """Parses flags and env, then serves."""

    def build(flags: argparse.Namespace) -> tuple[ServerConfig, Service]:
        config = TasksConfig.from_env(flags=flags)
        return config.server, TasksServer(config)

    return serve_main(SERVICE, build, argv)


if __name__ == "__main__":
    sys.exit(main())
