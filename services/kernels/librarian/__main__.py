"""`python -m services.kernels.librarian`: runs the librarian kernel until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import sys

from services.common.config import ServerConfig
from services.common.server import Service, serve_main
from services.kernels.librarian.config import SERVICE, LibrarianConfig
from services.kernels.librarian.server import LibrarianServer


def main(argv: list[str] | None = None) -> int:
    """Parses flags and env, then serves."""

    def build(flags: argparse.Namespace) -> tuple[ServerConfig, Service]:
        server = LibrarianServer(LibrarianConfig.from_env(flags=flags))
        return server.grpc_config(), server

    return serve_main(SERVICE, build, argv)


if __name__ == "__main__":
    sys.exit(main())
