"""`python -m services.kernels.immutable_log`: runs the immutable log until SIGTERM/SIGINT."""

from __future__ import annotations

import sys

from services.common.config import ConfigError, server_flag_parser
from services.common.server import run
from services.common.telemetry import configure_logging
from services.kernels.immutable_log.config import SERVICE, LogConfig
from services.kernels.immutable_log.server import ImmutableLogServer


def main(argv: list[str] | None = None) -> int:
    """Parses flags and env, then serves."""
    flags = server_flag_parser(SERVICE).parse_args(argv)
    configure_logging()
    try:
        config = LogConfig.from_env(flags=flags)
    except ConfigError as exc:
        print(f"immutable_log: configuration error: {exc}", file=sys.stderr)
        return 2
    return run(config.server, ImmutableLogServer(config))


if __name__ == "__main__":
    sys.exit(main())
