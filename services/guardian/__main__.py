"""`python -m services.guardian`: runs Guardian and its topology until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import sys

from services.common.config import ConfigError
from services.common.telemetry import configure_logging, configure_tracing
from services.guardian.config import SERVICE, GuardianConfig, guardian_flag_parser
from services.guardian.runner import serve
from services.guardian.topology import TopologyError, load_topology


def main(argv: list[str] | None = None) -> int:
    """Parses flags and env, validates the topology, then supervises."""
    flags = guardian_flag_parser().parse_args(argv)
    configure_logging()
    try:
        config = GuardianConfig.from_env(flags=flags)
        topology = load_topology(
            config.topology_file,
            groups=config.groups,
            reserved_ports={config.server.port: "guardian"},
        )
    except (ConfigError, TopologyError) as exc:
        print(f"{SERVICE}: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_tracing(SERVICE, config.server.env)
    return asyncio.run(serve(config, topology))


if __name__ == "__main__":
    sys.exit(main())
