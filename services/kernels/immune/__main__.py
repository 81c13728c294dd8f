"""`python -m services.kernels.immune`: runs the immune kernel until SIGTERM/SIGINT."""

from __future__ import annotations

import sys

from services.common.config import ConfigError, server_flag_parser
from services.common.server import run
from services.common.telemetry import configure_logging
from services.kernels.immune.config import SERVICE, ImmuneConfig
from services.kernels.immune.server import ImmuneServer


def main(argv: list[str] | None = None) -> int:
    """Parses flags and env, then serves."""
    flags = server_flag_parser(SERVICE).parse_args(argv)
    configure_logging()
    try:
        config = ImmuneConfig.from_env(flags=flags)
    except ConfigError as exc:
        print(f"immune: configuration error: {exc}", file=sys.stderr)
        return 2
    return run(config.server, ImmuneServer(config))


if __name__ == "__main__":
    sys.exit(main())
