"""`python -m services.kernels.governance`: runs the governance kernel until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import sys

from services.common.config import ServerConfig
from services.common.server import Service, serve_main
from services.kernels.governance.config import SERVICE, GovernanceConfig
from services.kernels.governance.server import GovernanceServer


def main(argv: list[str] | None = None) -> int:
    """Parses flags and env, then serves."""

    def build(flags: argparse.Namespace) -> tuple[ServerConfig, Service]:
        config = GovernanceConfig.from_env(flags=flags)
        return config.server, GovernanceServer(config)

    return serve_main(SERVICE, build, argv)


if __name__ == "__main__":
    sys.exit(main())
