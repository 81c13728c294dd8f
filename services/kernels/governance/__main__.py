"""`python -m services.kernels.governance`: runs the governance kernel until SIGTERM/SIGINT."""

from __future__ import annotations

import sys

from services.common.config import ConfigError, server_flag_parser
from services.common.errors import GraceError
from services.common.server import run
from services.common.telemetry import configure_logging
from services.kernels.governance.config import SERVICE, GovernanceConfig
from services.kernels.governance.server import GovernanceServer


def main(argv: list[str] | None = None) -> int:
    """Parses flags and env, then serves."""
    flags = server_flag_parser(SERVICE).parse_args(argv)
    configure_logging()
    try:
        config = GovernanceConfig.from_env(flags=flags)
    except ConfigError as exc:
        print(f"governance: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        return run(config.server, GovernanceServer(config))
    except GraceError as exc:  # a bad policy file: say which policy and field
        print(f"governance: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
