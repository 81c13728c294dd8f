"""`python -m services.orchestrator`: runs the orchestrator until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import sys

from services.common.config import ServerConfig
from services.common.server import Service, serve_main
from services.orchestrator.config import SERVICE, OrchestratorConfig
from services.orchestrator.events import publisher_for
from services.orchestrator.server import OrchestratorServer


def main(argv: list[str] | None = None) -> int:
    """Parses flags and env, then serves."""

    def build(flags: argparse.Namespace) -> tuple[ServerConfig, Service]:
        config = OrchestratorConfig.from_env(flags=flags)
        return config.server, OrchestratorServer(config, publisher=publisher_for(config.server.env))

    return serve_main(SERVICE, build, argv)


if __name__ == "__main__":
    sys.exit(main())
