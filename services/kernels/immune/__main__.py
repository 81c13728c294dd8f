"""`python -m services.kernels.immune`: runs the immune kernel until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import sys

from services.common.config import ServerConfig
from services.common.server import Service, serve_main
from services.kernels.immune.config import SERVICE, ImmuneConfig
from services.kernels.immune.server import ImmuneServer


def main(argv: list[str] | None = None) -> int:
    """Parses flags and env, then serves."""

    def build(flags: argparse.Namespace) -> tuple[ServerConfig, Service]:
        config = ImmuneConfig.from_env(flags=flags)
        return config.server, ImmuneServer(config)

    return serve_main(SERVICE, build, argv)


if __name__ == "__main__":
    sys.exit(main())
