"""Grace kernels: immutable log, trust, governance and immune."""
