"""Grace services: one package per gRPC server, plus the shared runtime in `common`."""
