"""`python -m services.kernels.trust`: runs the trust kernel until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import sys

from services.common.config import ServerConfig
from services.common.server import Service, serve_main
from services.kernels.trust.config import SERVICE, TrustConfig
from services.kernels.trust.server import TrustServer


def main(argv: list[str] | None = None) -> int:
    """Parses flags and env, then serves."""

    def build(flags: argparse.Namespace) -> tuple[ServerConfig, Service]:
        config = TrustConfig.from_env(flags=flags)
        return config.server, TrustServer(config)

    return serve_main(SERVICE, build, argv)


if __name__ == "__main__":
    sys.exit(main())
