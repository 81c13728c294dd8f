"""Grace kernels: immutable log, trust (and governance, immune)."""
