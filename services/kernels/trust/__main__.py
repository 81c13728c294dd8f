"""`python -m services.kernels.trust`: runs the trust kernel until SIGTERM/SIGINT."""

from __future__ import annotations

import sys

from services.common.config import ConfigError, server_flag_parser
from services.common.server import run
from services.common.telemetry import configure_logging
from services.kernels.trust.config import SERVICE, TrustConfig
from services.kernels.trust.server import TrustServer


def main(argv: list[str] | None = None) -> int:
    """Parses flags and env, then serves."""
    flags = server_flag_parser(SERVICE).parse_args(argv)
    configure_logging()
    try:
        config = TrustConfig.from_env(flags=flags)
    except ConfigError as exc:
        print(f"trust: configuration error: {exc}", file=sys.stderr)
        return 2
    return run(config.server, TrustServer(config))


if __name__ == "__main__":
    sys.exit(main())
