"""`python -m services.kernels.learning`: runs the learning kernel until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import sys

from services.common.config import ServerConfig
from services.common.server import Service, serve_main
from services.kernels.learning.config import SERVICE, LearningConfig
from services.kernels.learning.server import LearningServer


def main(argv: list[str] | None = None) -> int:
    """Parses flags and env, then serves."""

    def build(flags: argparse.Namespace) -> tuple[ServerConfig, Service]:
        config = LearningConfig.from_env(flags=flags)
        return config.server, LearningServer(config)

    return serve_main(SERVICE, build, argv)


if __name__ == "__main__":
    sys.exit(main())
