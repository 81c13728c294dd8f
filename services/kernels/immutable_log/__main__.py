"""`python -m services.kernels.immutable_log`: runs the immutable log until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import sys

from services.common.config import ServerConfig
from services.common.server import Service, serve_main
from services.kernels.immutable_log.config import SERVICE, LogConfig
from services.kernels.immutable_log.server import ImmutableLogServer


def main(argv: list[str] | None = None) -> int:
    """Parses flags and env, then serves."""

    def build(flags: argparse.Namespace) -> tuple[ServerConfig, Service]:
        config = LogConfig.from_env(flags=flags)
        return config.server, ImmutableLogServer(config)

    return serve_main(SERVICE, build, argv)


if __name__ == "__main__":
    sys.exit(main())
