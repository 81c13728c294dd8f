"""`python -m services.kernels.triggers`: runs the trigger mesh until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import sys

from services.common.config import ServerConfig
from services.common.server import Service, serve_main
from services.kernels.triggers.config import SERVICE, TriggersConfig
from services.kernels.triggers.server import TriggersServer


def main(argv: list[str] | None = None) -> int:
    """Parses flags and env, then serves."""

    def build(flags: argparse.Namespace) -> tuple[ServerConfig, Service]:
        config = TriggersConfig.from_env(flags=flags)
        return config.server, TriggersServer(config)

    return serve_main(SERVICE, build, argv)


if __name__ == "__main__":
    sys.exit(main())
