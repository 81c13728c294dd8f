"""Guardian: boots Grace's components in chunks, probes them, restarts and heals them."""
