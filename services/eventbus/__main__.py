"""`python -m services.eventbus`: runs the event bus server until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import sys

from services.common.config import ServerConfig
from services.common.server import Service, serve_main
from services.eventbus.config import SERVICE, EventBusConfig
from services.eventbus.server import EventBusServer


def main(argv: list[str] | None = None) -> int:
    """Parses flags and env, then serves."""

    def build(flags: argparse.Namespace) -> tuple[ServerConfig, Service]:
        config = EventBusConfig.from_env(flags=flags)
        return config.server, EventBusServer(config)

    return serve_main(SERVICE, build, argv)


if __name__ == "__main__":
    sys.exit(main())
