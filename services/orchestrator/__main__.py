"""`python -m services.orchestrator`: runs the orchestrator until SIGTERM/SIGINT."""

from __future__ import annotations

import sys

from services.common.config import ConfigError, server_flag_parser
from services.common.server import run
from services.common.telemetry import configure_logging
from services.orchestrator.config import SERVICE, OrchestratorConfig
from services.orchestrator.events import publisher_for
from services.orchestrator.server import OrchestratorServer


def main(argv: list[str] | None = None) -> int:
    """Parses flags and env, then serves."""
    flags = server_flag_parser(SERVICE).parse_args(argv)
    configure_logging()
    try:
        config = OrchestratorConfig.from_env(flags=flags)
    except ConfigError as exc:
        print(f"orchestrator: configuration error: {exc}", file=sys.stderr)
        return 2
    publisher = publisher_for(config.server.env)
    return run(config.server, OrchestratorServer(config, publisher=publisher))


if __name__ == "__main__":
    sys.exit(main())
